"""Python side of the fastwarp:: operators: fake (meta) kernels for torch.compile, and
autograd. The schemas and the CPU/CUDA kernels are in csrc/.

Modes and paddings are strings in the public API; the tables below are the only place they
become the integer codes of the schemas (csrc/common/sampling.h mirrors them).
"""

import torch

INTERP = {"linear": 0, "bilinear": 0, "trilinear": 0, "nearest": 1}
PADDING = {"zeros": 0, "border": 1, "reflection": 2}
NCC_REDUCTION = {"none": 0, "mean": 1, "batch": 2}  # csrc/common/ncc_op.h
LINEAR = INTERP["linear"]
NEAREST = INTERP["nearest"]

# The forward Jacobian (csrc/common/sampling.h, Note [Forward Jacobian]) holds ndim values
# per output element; it is asked for only while that is at most this many per point of the
# coordinate field (e.g. one or two single-channel images per field).
JACOBIAN_MAX_IMAGES_PER_FIELD = 2


def has_cuda_kernels() -> bool:
    """Whether this build of fastwarp has CUDA kernels (it was compiled with a toolkit)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastwarp::warp", "CUDA")


def want_jacobian(image, coords, interp):
    """Whether the forward should also return its Jacobian: the training case, where only
    the coordinates need a gradient and the Jacobian is small."""
    return (
        interp == LINEAR
        and torch.is_grad_enabled()
        and coords.requires_grad
        and not image.requires_grad
        and image.is_floating_point()
        and image.shape[0] * image.shape[1] <= JACOBIAN_MAX_IMAGES_PER_FIELD * coords.shape[0]
    )


# --------------------------------------------------------------------------- fake kernels


def _jacobian_fake(out, nd, jacobian):
    if jacobian:
        return out.new_empty((*out.shape[:2], nd, *out.shape[2:]))
    return out.new_empty(0)


def _warp_fake(image, disp, interp, padding, jacobian=False):
    out = image.new_empty(image.shape)
    return out, _jacobian_fake(out, image.dim() - 2, jacobian)


def _grid_sample_fake(input, grid, interp, padding, align_corners, jacobian=False):
    out = input.new_empty((*input.shape[:2], *grid.shape[1:-1]))
    return out, _jacobian_fake(out, input.dim() - 2, jacobian)


def _backward_fake(grad_output, image_size, coords, output_mask):
    grad_image = grad_output.new_empty(image_size) if output_mask[0] else grad_output.new_empty(0)
    grad_coords = coords.new_empty(coords.shape) if output_mask[1] else coords.new_empty(0)
    return grad_image, grad_coords


def _warp_backward_fake(grad_output, image, image_size, disp, interp, padding, output_mask):
    return _backward_fake(grad_output, image_size, disp, output_mask)


def _grid_sample_backward_fake(
    grad_output, input, input_size, grid, interp, padding, align_corners, output_mask
):
    return _backward_fake(grad_output, input_size, grid, output_mask)


# --------------------------------------------------------------------------- autograd
#
# Both ops are linear in the image, so the image gradient needs only the coordinates; the
# coordinate gradient also needs the image, which is therefore saved only when that
# gradient is wanted and no forward Jacobian was computed. With the Jacobian, the
# coordinate gradient is sum over channels of grad * jacobian. Nearest sampling is
# piecewise constant: its coordinate gradient is zero and needs no kernel. Second
# derivatives are not implemented.


def _setup_context(ctx, inputs, output):
    image, coords, interp = inputs[0], inputs[1], inputs[2]
    jac = output[1]
    ctx.mark_non_differentiable(jac)
    ctx.interp = interp
    ctx.extra = tuple(inputs[3:-1])  # padding (and align_corners for grid_sample)
    ctx.image_size = image.shape
    ctx.coord_batch = coords.shape[0]
    ctx.use_jacobian = jac.numel() > 0
    need_image = ctx.needs_input_grad[1] and interp == LINEAR and not ctx.use_jacobian
    ctx.save_for_backward(
        image if need_image else None, coords, jac if ctx.use_jacobian else None
    )


def _coords_grad_from_jacobian(grad, jac, coord_batch, grid_layout):
    # grad (N, C, *S), jac (N, C, ndim, *S) -> (N or 1, ndim, *S), axis order
    if jac.dtype in (torch.float16, torch.bfloat16):
        g = (grad.float().unsqueeze(2) * jac.float()).sum(1).to(jac.dtype)
    elif jac.shape[1] == 1:  # one channel (training): one pass, no (N, 1, ndim, *S) temporary
        g = jac[:, 0] * grad
    else:
        g = (grad.unsqueeze(2) * jac).sum(1)
    if coord_batch == 1 and g.shape[0] != 1:
        g = g.sum(0, keepdim=True)
    if grid_layout:  # grid components are (x, y[, z]): axis order reversed, channels last
        g = g.movedim(1, -1).flip(-1)
    return g


def _make_backward(backward_op, grid_layout):
    n_extra = 4 if grid_layout else 3  # interp, padding, [align_corners,] jacobian

    def backward(ctx, grad, _grad_jac):
        image, coords, jac = ctx.saved_tensors
        want_image, want_coords = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_image = grad_coords = None
        if want_coords and ctx.interp == NEAREST:
            grad_coords = torch.zeros_like(coords)
            want_coords = False
        if want_coords and jac is not None:
            grad_coords = _coords_grad_from_jacobian(grad, jac, ctx.coord_batch, grid_layout)
            want_coords = False
        if want_image or want_coords:
            gi, gc = backward_op(
                grad, image, ctx.image_size, coords, ctx.interp, *ctx.extra, [want_image, want_coords]
            )
            grad_image = gi if want_image else None
            grad_coords = gc if want_coords else grad_coords
        return (grad_image, grad_coords) + (None,) * n_extra

    return backward




# --------------------------------------------------------------------------- ncc
#
# The backward recomputes the window sums from the inputs (csrc/common/ncc.h, Note
# [Windowed NCC]): only a and b are saved, never the moment volumes. The reduction is
# the op's own, so that the GPU kernels reduce as they go and write no cc map.


def _ncc_output_shape(a, reduction):
    if reduction == NCC_REDUCTION["none"]:
        return a.shape
    return a.shape[:2] if reduction == NCC_REDUCTION["batch"] else ()


def _ncc_fake(a, b, window, eps, reduction=0):
    return a.new_empty(_ncc_output_shape(a, reduction))


def _ncc_backward_fake(grad_output, a, b, window, eps, reduction, output_mask):
    return (
        a.new_empty(a.shape) if output_mask[0] else a.new_empty(0),
        b.new_empty(b.shape) if output_mask[1] else b.new_empty(0),
    )


def _ncc_setup_context(ctx, inputs, output):
    a, b, window, eps = inputs[:4]
    ctx.window, ctx.eps = window, eps
    ctx.reduction = inputs[4] if len(inputs) > 4 else NCC_REDUCTION["none"]
    ctx.save_for_backward(a, b)


def _make_ncc_backward(backward_op):
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
        ga, gb = backward_op(grad, a, b, ctx.window, ctx.eps, ctx.reduction, mask)
        return (ga if mask[0] else None, gb if mask[1] else None, None, None, None)

    return backward


# --------------------------------------------------------------------------- autocast
#
# grid_sample's autocast policy, for both sampling ops: ATen lists grid_sampler among
# autocast's "promote" ops, which run in the widest floating dtype of their inputs. Outside
# autocast, mixed dtypes are an error (fastwarp/warp.py), as they are for grid_sample.

_LIBRARIES = {}


def _library(namespace):
    if namespace not in _LIBRARIES:
        _LIBRARIES[namespace] = torch.library.Library(namespace, "IMPL")
    return _LIBRARIES[namespace]


def _register_promote_autocast(namespace, name):
    op = getattr(getattr(torch.ops, namespace), name).default
    for device_type in ("cpu", "cuda"):
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        dispatch_key = getattr(torch._C.DispatchKey, key)

        def promoted(image, coords, *rest, _key=dispatch_key):
            if image.is_floating_point() and coords.dtype != image.dtype:
                dtype = torch.promote_types(image.dtype, coords.dtype)
                image, coords = image.to(dtype), coords.to(dtype)
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_key)):
                return op(image, coords, *rest)

        if op.has_kernel_for_dispatch_key(dispatch_key):
            op.py_kernels.pop(dispatch_key, None)
        op.py_impl(dispatch_key)(promoted)  # the Python dispatcher's (torch.compile) path
        _library(namespace).impl(name, lambda _keyset, *args, _f=promoted: _f(*args), key, with_keyset=True)


# --------------------------------------------------------------------------- registration


def register(namespace):
    """Fake kernels and autograd for the ops of ``namespace``: ``fastwarp``, and the private
    twin ``fastwarp_emu`` of the emulated-CUDA test build (fastwarp/_emu.py), which has the
    same schemas."""
    ops = getattr(torch.ops, namespace)
    for name, fake in (
        ("warp", _warp_fake),
        ("grid_sample", _grid_sample_fake),
        ("warp_backward", _warp_backward_fake),
        ("grid_sample_backward", _grid_sample_backward_fake),
        ("ncc", _ncc_fake),
        ("ncc_backward", _ncc_backward_fake),
    ):
        torch.library.register_fake(f"{namespace}::{name}", fake)
    torch.library.register_autograd(
        f"{namespace}::warp",
        _make_backward(ops.warp_backward.default, grid_layout=False),
        setup_context=_setup_context,
    )
    torch.library.register_autograd(
        f"{namespace}::grid_sample",
        _make_backward(ops.grid_sample_backward.default, grid_layout=True),
        setup_context=_setup_context,
    )
    torch.library.register_autograd(
        f"{namespace}::ncc", _make_ncc_backward(ops.ncc_backward.default), setup_context=_ncc_setup_context
    )
    for name in ("warp", "grid_sample"):
        _register_promote_autocast(namespace, name)


register("fastwarp")
