"""Python side of the fastwarp:: operators: fake (meta) kernels for torch.compile, autograd
(every order, forward mode and functorch), batching rules for vmap, and autocast. The
schemas and the CPU/CUDA kernels are in csrc/.

Modes and paddings are strings in the public API; the tables below are the only place they
become the integer codes of the schemas (csrc/common/sampling.h mirrors them).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch._library.utils import fill_defaults
from torch.autograd import forward_ad

INTERP = {"linear": 0, "bilinear": 0, "trilinear": 0, "nearest": 1}
PADDING = {"zeros": 0, "border": 1, "reflection": 2}
NCC_REDUCTION = {"none": 0, "mean": 1, "batch": 2}  # csrc/common/ncc_host.h
COORD_KIND = {"displacement": 0, "grid": 1}  # csrc/common/sample_host.h
PARZEN_KERNEL = {"bspline": 0, "gaussian": 1}  # csrc/common/mi.h
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


def _sampled_shape(image_size, coords, grid):
    return (*image_size[:2], *(coords.shape[1:-1] if grid else coords.shape[2:]))


def _jacobian_fake(out, nd, jacobian):
    if jacobian:
        return out.new_empty((*out.shape[:2], nd, *out.shape[2:]))
    return out.new_empty(0)


def _warp_fake(image, disp, interp, padding, jacobian=False):
    out = image.new_empty(_sampled_shape(image.shape, disp, False))
    return out, _jacobian_fake(out, image.dim() - 2, jacobian)


def _grid_sample_fake(input, grid, interp, padding, align_corners, jacobian=False):
    out = input.new_empty(_sampled_shape(input.shape, grid, True))
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


def _affine_warp_fake(image, disp, affine, out_size, interp, padding):
    return image.new_empty((*image.shape[:2], *out_size))


def _affine_batch(disp, affine):
    return max(affine.shape[0], disp.shape[0] if disp is not None else 1)


def _affine_warp_backward_fake(grad_output, image, image_size, disp, affine, interp, padding, output_mask):
    grad_image = grad_output.new_empty(image_size) if output_mask[0] else grad_output.new_empty(0)
    shape = (_affine_batch(disp, affine), len(image_size) - 2, *grad_output.shape[2:])
    grad_source = grad_output.new_empty(shape) if output_mask[1] else grad_output.new_empty(0)
    return grad_image, grad_source


def _sample_derivative_fake(image, coords, kind, interp, padding, align_corners, order):
    return image.new_empty(_sampled_shape(image.shape, coords, kind == COORD_KIND["grid"]))


def _splat_derivative_fake(values, image_size, coords, kind, interp, padding, align_corners, order):
    return values.new_empty(image_size)


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


def _mi_histogram_fake(a, b, mask, range, bins, kernel, sigma):
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    return a.new_empty((a.shape[0], a.shape[1], bins, bins), dtype=dtype)


def _mi_histogram_backward_fake(grad, a, b, mask, range, bins, kernel, sigma, output_mask):
    return (
        a.new_empty(a.shape) if output_mask[0] else a.new_empty(0),
        b.new_empty(b.shape) if output_mask[1] else b.new_empty(0),
    )


# --------------------------------------------------------------------------- derivatives
#
# Note [Derivatives of any order]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# Write D_a(I, c) for the sampling of image I at coordinates c with the weights
# differentiated a = (a_0, .., a_{nd-1}) times along the spatial axes (Note [Derivative
# weights] in csrc/common/sampling.h), and D_a^T(h, c) for its transpose in the image (h
# scattered onto the corners with the same weights): the ops fastwarp::sample_derivative
# and fastwarp::splat_derivative. The forward is D_0, its Jacobian column k is D_{e_k}, and
# every derivative of either op is again one of them:
#
#   D_a(I, c):   grad_I = D_a^T(g, c)        grad_c_k = sum_{n,ch} g * D_{a+e_k}(I, c)
#                tangent = D_a(I', c) + sum_k c'_k * D_{a+e_k}(I, c)
#   D_a^T(h, c): grad_h = D_a(g, c)          grad_c_k = sum_{n,ch} h * D_{a+e_k}(g, c)
#                tangent = D_a^T(h', c) + sum_k D_{a+e_k}^T(h * c'_k, c)
#
# (sum over n only for a field shared by the batch; c'_k is the tangent of the coordinate
# component that addresses axis k). So both ops are differentiable to any order by the two
# kernels alone, and for linear interpolation the orders stop growing at a = (1, .., 1):
# past it, every derivative vanishes (a_k >= 2), and the ops return zeros without a launch.
#
# The fused first-order kernels (fastwarp::warp's forward Jacobian, fastwarp::*_backward)
# stay the path of training; their own derivatives are written in D_a and D_a^T below:
# the backward op's outputs are (D_0^T(g, c), sum g * D_{e_k}(I, c)), so given their
# gradients (G_I, G_c) and tangents:
#
#   grad_g = D_0(G_I, c) + sum_k G_c,k * D_{e_k}(I, c)
#   grad_I = sum_k D_{e_k}^T(g * G_c,k, c)
#   grad_c = [sum g * D_{e_l}(G_I, c)]_l + sum_k [sum (g * G_c,k) * D_{e_k+e_l}(I, c)]_l
#
# Cost: a second derivative of a 3-D warp launches about 16 sampling-sized kernels where
# the first-order backward launches one; speed matters less there than being right.


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How one call samples (the ops' namespace, the coordinate kind and the options), and
    the derivative ops of Note [Derivatives of any order] bound to it."""

    namespace: str
    grid: bool
    interp: int
    padding: int
    align_corners: bool

    @property
    def ops(self):
        return getattr(torch.ops, self.namespace)

    def vanishes(self, order):
        return any(o > (1 if self.interp == LINEAR else 0) for o in order)

    def sample(self, image, coords, order):
        """D_order(image, coords): (N, C, *out_spatial)."""
        return self.ops.sample_derivative.default(
            image, coords, int(self.grid), self.interp, self.padding, self.align_corners, list(order)
        )

    def splat(self, values, image_size, coords, order):
        """D_order^T(values, coords): (N, C, *in_spatial) = image_size."""
        return self.ops.splat_derivative.default(
            values, list(image_size), coords, int(self.grid), self.interp, self.padding, self.align_corners,
            list(order),
        )

    def component(self, t, k):
        """The component of a coordinate-shaped tensor that addresses spatial axis k, as
        (N_c, 1, *out_spatial), to broadcast against (N, C, *out_spatial)."""
        if self.grid:
            return t[..., t.shape[-1] - 1 - k].unsqueeze(1)
        return t[:, k : k + 1]

    def coords_grad(self, values, image, coords, order):
        """[sum over (n,) ch of values * D_{order+e_k}(image, coords)]_k, in the layout of
        coords: the coordinate gradient of <values, D_order(image, coords)>."""
        parts = []
        for k in range(image.dim() - 2):
            o = _raised(order, k)
            if self.vanishes(o):
                parts.append(coords.new_zeros((coords.shape[0], *values.shape[2:])))
                continue
            d = (values * self.sample(image, coords, o)).sum(1)
            if coords.shape[0] == 1 and d.shape[0] != 1:  # a field shared by the batch
                d = d.sum(0, keepdim=True)
            parts.append(d)
        g = torch.stack(parts, 1)  # (N_c, nd, *out_spatial), axis order
        return g.movedim(1, -1).flip(-1) if self.grid else g


def _raised(order, k):
    return [o + (j == k) for j, o in enumerate(order)]


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


# The two first-order paths of the coordinate gradient: from the forward Jacobian, or the
# backward op (which needs the image).
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


# --------------------------------------------------------------------------- autograd
#
# Each op gets an autograd.Function (forward, setup_context, backward, jvp, and a vmap rule
# generated from the ops' batching rules) as its kernel at the Autograd key: the dispatcher
# routes every differentiable call through it, including torch.compile's tracing and the
# functorch transforms (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap), which need
# setup_context-style Functions. An op's forward runs the op below autograd.
#
# The sampling ops are linear in the image, so the image gradient needs only the
# coordinates; the coordinate gradient also needs the image. The image is an input, so
# keeping it for the backward holds a reference, not a copy. With the forward Jacobian, the
# coordinate gradient is sum over channels of grad * jacobian; the Jacobian stays a
# differentiable output (D_{e_k}), so even that path differentiates again correctly.
# Nearest sampling is piecewise constant: its coordinate gradient is zero.


def _needs_autograd(args):
    """Whether a call must go through the op's autograd.Function: something may want a
    derivative (a gradient, a forward-mode tangent, or a functorch transform)."""
    if torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0:
        return True
    return torch.is_grad_enabled() and torch._C._any_requires_grad(*args)


def _below_autograd(op, *args):
    if torch._C._are_functorch_transforms_active():
        # The Function's apply turned gradients off for its forward, but under nested
        # transforms the op still passes through the outer levels, which must record it:
        # functorch's own Functions turn them back on the same way.
        with torch.enable_grad(), forward_ad._set_fwd_grad_enabled(True), torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


NESTED_FORWARD_MODE = (
    "fastwarp: forward-mode AD nested in forward-mode AD (jvp of jvp, jacfwd of jacfwd) is not "
    "supported: torch runs an autograd.Function's jvp with forward gradients off, so the outer "
    "tangent would silently be zero. Use reverse mode for one of the two levels (torch.func.hessian "
    "is forward over reverse, and works)"
)


def check_forward_levels():
    """Raises where a custom jvp would return a silently wrong (zero) second-order
    tangent: under two functorch forward-mode levels."""
    if torch._C._are_functorch_transforms_active():
        stack = torch._C._functorch.get_interpreter_stack() or []
        if sum(i.key() == torch._C._functorch.TransformType.Jvp for i in stack) > 1:
            raise RuntimeError(NESTED_FORWARD_MODE)


def _function(name, op, setup_context, backward, jvp, *bound):
    """An autograd.Function for ``op``: its forward is ``op`` below autograd, its
    setup_context ``setup_context(*bound, ctx, inputs, output)`` (what it needs to know of the
    op: the namespace, the coordinate kind), its backward and jvp the module functions given,
    the jvp behind :func:`check_forward_levels`; vmap by the ops' batching rules."""

    def checked_jvp(ctx, *tangents):
        check_forward_levels()
        return jvp(ctx, *tangents)

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(functools.partial(_below_autograd, op)),
        "setup_context": staticmethod(functools.partial(setup_context, *bound)),
        "backward": staticmethod(backward),
        "jvp": staticmethod(checked_jvp),
        "generate_vmap_rule": True,
    })


def _sampling(namespace, grid, interp, options):
    """The :class:`Sampling` of a call of a sampling op (options: padding[, align_corners], ...)."""
    return Sampling(namespace, grid, interp, options[0], bool(options[1]) if grid else True)


# ---- the forward ops: warp / grid_sample (image, coords, interp, padding[, align_corners],
# jacobian) -> (out, jac)


def _sample_setup(namespace, grid, ctx, inputs, output):
    image, coords, interp, *options = inputs
    ops = getattr(torch.ops, namespace)
    ctx.sampling = _sampling(namespace, grid, interp, options)
    ctx.backward_op = (ops.grid_sample_backward if grid else ops.warp_backward).default
    ctx.options = options[:-1]
    ctx.image_size = image.shape
    ctx.set_materialize_grads(False)
    jac = output[1] if options[-1] else None
    ctx.save_for_backward(image, coords, jac)
    ctx.save_for_forward(image, coords, jac)


def _sample_backward(ctx, grad, grad_jac):
    image, coords, jac = ctx.saved_tensors
    s = ctx.sampling
    want_image, want_coords = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_image = grad_coords = None
    if grad is not None:
        bw_coords = want_coords
        if want_coords and s.interp == NEAREST:
            grad_coords, bw_coords = torch.zeros_like(coords), False
        elif want_coords and jac is not None:
            grad_coords = _coords_grad_from_jacobian(grad, jac, coords.shape[0], s.grid)
            bw_coords = False
        if want_image or bw_coords:
            gi, gc = ctx.backward_op(
                grad, image if bw_coords else None, list(ctx.image_size), coords, s.interp, *ctx.options,
                [want_image, bw_coords],
            )
            grad_image = gi if want_image else None
            grad_coords = gc if bw_coords else grad_coords
    if grad_jac is not None and jac is not None:  # the Jacobian's own gradient: jac[:, :, k] = D_{e_k}(image, coords)
        zero = [0] * (image.dim() - 2)
        for k in range(len(zero)):
            e_k = _raised(zero, k)
            if want_image:
                grad_image = _add(grad_image, s.splat(grad_jac[:, :, k], ctx.image_size, coords, e_k))
            if want_coords:
                grad_coords = _add(grad_coords, s.coords_grad(grad_jac[:, :, k], image, coords, e_k))
    return (grad_image, grad_coords) + (None,) * (len(ctx.options) + 2)


def _sample_jvp(ctx, image_t, coords_t, *_):
    image, coords, jac = ctx.saved_tensors
    s = ctx.sampling
    if not image.is_floating_point():  # a label map: integer outputs have no tangent
        return None, None
    zero = [0] * (image.dim() - 2)
    out_t = s.sample(image_t, coords, zero) if image_t is not None else None
    if coords_t is not None:
        for k in range(len(zero)):
            d_k = jac[:, :, k] if jac is not None else s.sample(image, coords, _raised(zero, k))
            out_t = _add(out_t, d_k * s.component(coords_t, k))
    if out_t is None:
        out_t = image.new_zeros(_sampled_shape(image.shape, coords, s.grid))
    if jac is None:  # (a floating output needs a tangent tensor, even an empty one: autograd rejects None)
        return out_t, image.new_zeros(0)
    columns = []
    for k in range(len(zero)):
        e_k = _raised(zero, k)
        col = s.sample(image_t, coords, e_k) if image_t is not None else None
        if coords_t is not None:
            for j in range(len(zero)):
                col = _add(col, s.sample(image, coords, _raised(e_k, j)) * s.component(coords_t, j))
        columns.append(col if col is not None else torch.zeros_like(jac[:, :, k]))
    return out_t, torch.stack(columns, 2)


# ---- the backward ops: (grad, image?, image_size, coords, interp, padding[, align_corners],
# output_mask) -> (grad_image, grad_coords); their derivatives, Note [Derivatives of any order]


def _sample_bw_setup(namespace, grid, ctx, inputs, output):
    grad, image, image_size, coords, interp, *options = inputs
    ctx.sampling = _sampling(namespace, grid, interp, options)
    ctx.image_size = list(image_size)
    ctx.mask = list(options[-1])
    ctx.n_options = len(options)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad, image, coords)
    ctx.save_for_forward(grad, image, coords)


def _sample_bw_backward(ctx, gg_image, gg_coords):
    grad, image, coords = ctx.saved_tensors
    s = ctx.sampling
    gg_image = gg_image if ctx.mask[0] else None
    gg_coords = gg_coords if ctx.mask[1] and s.interp == LINEAR else None
    want_grad, want_image, want_coords = (ctx.needs_input_grad[i] for i in (0, 1, 3))
    zero = [0] * (len(ctx.image_size) - 2)
    grad_grad = grad_image = grad_coords = None
    if gg_image is not None:
        if want_grad:
            grad_grad = s.sample(gg_image, coords, zero)
        if want_coords:
            grad_coords = s.coords_grad(grad, gg_image, coords, zero)
    if gg_coords is not None:
        for k in range(len(zero)):
            e_k = _raised(zero, k)
            gc_k = s.component(gg_coords, k)
            if want_grad:
                grad_grad = _add(grad_grad, gc_k * s.sample(image, coords, e_k))
            if want_image:
                grad_image = _add(grad_image, s.splat(grad * gc_k, ctx.image_size, coords, e_k))
            if want_coords:
                grad_coords = _add(grad_coords, s.coords_grad(grad * gc_k, image, coords, e_k))
    return (grad_grad, grad_image, None, grad_coords) + (None,) * (ctx.n_options + 1)


def _sample_bw_jvp(ctx, grad_t, image_t, _size_t, coords_t, *_):
    grad, image, coords = ctx.saved_tensors
    s = ctx.sampling
    zero = [0] * (len(ctx.image_size) - 2)
    linear = s.interp == LINEAR and coords_t is not None
    # (an unrequested gradient is an empty output, whose tangent is empty too: not None)
    gi_t, gc_t = grad.new_zeros(0), coords.new_zeros(0)
    if ctx.mask[0]:
        gi_t = s.splat(grad_t, ctx.image_size, coords, zero) if grad_t is not None else None
        for k in range(len(zero) if linear else 0):
            gi_t = _add(gi_t, s.splat(grad * s.component(coords_t, k), ctx.image_size, coords, _raised(zero, k)))
        gi_t = grad.new_zeros(ctx.image_size) if gi_t is None else gi_t
    if ctx.mask[1]:
        gc_t = None
        if image is not None and grad_t is not None:
            gc_t = s.coords_grad(grad_t, image, coords, zero)
        for k in range(len(zero) if linear and image is not None else 0):
            gc_t = _add(gc_t, s.coords_grad(grad * s.component(coords_t, k), image, coords, _raised(zero, k)))
        if image_t is not None:
            gc_t = _add(gc_t, s.coords_grad(grad, image_t, coords, zero))
        gc_t = torch.zeros_like(coords) if gc_t is None else gc_t
    return gi_t, gc_t


# ---- the derivative ops: sample_derivative(image, coords, kind, interp, padding,
# align_corners, order) and splat_derivative(values, image_size, coords, kind, ...)


def _derivative_setup(namespace, splat, ctx, inputs, output):
    kind, interp, padding, align_corners, order = inputs[-5:]
    ctx.sampling = Sampling(namespace, kind == COORD_KIND["grid"], interp, padding, align_corners)
    ctx.order = list(order)
    ctx.image_size = list(inputs[1]) if splat else None  # (values, image_size, coords, ...)
    coords = inputs[2] if splat else inputs[1]  # (image, coords, ...)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(inputs[0], coords)
    ctx.save_for_forward(inputs[0], coords)


def _sample_derivative_backward(ctx, grad):
    image, coords = ctx.saved_tensors
    s, order = ctx.sampling, ctx.order
    grad_image = s.splat(grad, image.shape, coords, order) if ctx.needs_input_grad[0] else None
    grad_coords = s.coords_grad(grad, image, coords, order) if ctx.needs_input_grad[1] else None
    return grad_image, grad_coords, None, None, None, None, None


def _sample_derivative_jvp(ctx, image_t, coords_t, *_):
    image, coords = ctx.saved_tensors
    s, order = ctx.sampling, ctx.order
    out_t = s.sample(image_t, coords, order) if image_t is not None else None
    for k in range(image.dim() - 2 if coords_t is not None else 0):
        o = _raised(order, k)
        if not s.vanishes(o):
            out_t = _add(out_t, s.sample(image, coords, o) * s.component(coords_t, k))
    return out_t if out_t is not None else image.new_zeros(_sampled_shape(image.shape, coords, s.grid))


def _splat_derivative_backward(ctx, grad):
    values, coords = ctx.saved_tensors
    s, order = ctx.sampling, ctx.order
    grad_values = s.sample(grad, coords, order) if ctx.needs_input_grad[0] else None
    grad_coords = s.coords_grad(values, grad, coords, order) if ctx.needs_input_grad[2] else None
    return grad_values, None, grad_coords, None, None, None, None, None


def _splat_derivative_jvp(ctx, values_t, _size_t, coords_t, *_):
    values, coords = ctx.saved_tensors
    s, order = ctx.sampling, ctx.order
    out_t = s.splat(values_t, ctx.image_size, coords, order) if values_t is not None else None
    for k in range(len(ctx.image_size) - 2 if coords_t is not None else 0):
        o = _raised(order, k)
        if not s.vanishes(o):
            out_t = _add(out_t, s.splat(values * s.component(coords_t, k), ctx.image_size, coords, o))
    return out_t if out_t is not None else values.new_zeros(ctx.image_size)


# --------------------------------------------------------------------------- ncc
#
# The backward recomputes the window sums from the inputs (csrc/common/ncc.h, Note
# [Windowed NCC]): only a and b are saved, never the moment volumes. The reduction is
# the op's own, so that the GPU kernels reduce as they go and write no cc map.
#
# Forward mode: for the reduced NCC ("mean", "batch") the tangent is the gradient's inner
# product with the inputs' tangents, one backward pass: exact and cheap. The cc map
# ("none") would need the window algebra's own tangent, and second derivatives the
# backward's; both raise rather than return a wrong zero.

NCC_NO_SECOND_DERIVATIVE = (
    "fastwarp.ncc has no second derivative: differentiating its gradient again (double "
    "backward, a Hessian, or forward mode over its gradient) is not implemented"
)


def _ncc_setup(namespace, ctx, inputs, output):
    a, b, window, eps, reduction = inputs
    ctx.backward_op = getattr(torch.ops, namespace).ncc_backward.default
    ctx.window, ctx.eps, ctx.reduction = window, eps, reduction
    ctx.save_for_backward(a, b)
    ctx.save_for_forward(a, b)


def _ncc_backward(ctx, grad):
    a, b = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
    ga, gb = ctx.backward_op(grad, a, b, ctx.window, ctx.eps, ctx.reduction, mask)
    return (ga if mask[0] else None, gb if mask[1] else None, None, None, None)


def _ncc_jvp(ctx, a_t, b_t, *_):
    if ctx.reduction == NCC_REDUCTION["none"]:
        raise RuntimeError(
            "fastwarp.ncc: forward-mode AD (jvp) of the cc map, reduction='none', is not "
            "implemented; it is for reduction='mean' and 'batch'"
        )
    a, b = ctx.saved_tensors
    ones = a.new_ones(_ncc_output_shape(a, ctx.reduction))
    mask = [a_t is not None, b_t is not None]
    ga, gb = ctx.backward_op(ones, a, b, ctx.window, ctx.eps, ctx.reduction, mask)
    dot = _add(ga * a_t if mask[0] else None, gb * b_t if mask[1] else None)
    return dot.sum() if ctx.reduction == NCC_REDUCTION["mean"] else dot.flatten(2).sum(2)


def _save_nothing(namespace, ctx, inputs, output):
    pass


def _refuse(ctx, *_):
    raise RuntimeError(NCC_NO_SECOND_DERIVATIVE)


# --------------------------------------------------------------------------- affine_warp
#
# The kernel's backward gives g_y = d(loss)/d(source index) per output point (csrc/common/
# sampling.h, Note [Affine sampling]); y = L q + t with q = p + u(p), so
#   d(loss)/d(u) = L^T g_y,   d(loss)/d(L) = sum_p g_y q^T,   d(loss)/d(t) = sum_p g_y.
# The sum of g_y p^T needs no grid: along axis j it is g_y summed over the other axes, dotted
# with the indices 0 .. S_j - 1. Forward mode and second derivatives raise.

AFFINE_NOT_TWICE = (
    "fastwarp.warp with an affine has no second derivative and no forward mode: differentiating "
    "its gradient again (double backward, a Hessian) or a jvp/jacfwd through it is not implemented; "
    "use reverse mode once (backward, torch.func.grad, vjp or jacrev)"
)


def _affine_setup(namespace, ctx, inputs, output):
    image, disp, affine, out_size, interp, padding = inputs
    ctx.backward_op = getattr(torch.ops, namespace).affine_warp_backward.default
    ctx.interp, ctx.padding, ctx.image_size = interp, padding, image.shape
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(image, disp, affine)


def _affine_backward(ctx, grad):
    image, disp, affine = ctx.saved_tensors
    want_image = ctx.needs_input_grad[0]
    want_disp = disp is not None and ctx.needs_input_grad[1]
    want_affine = ctx.needs_input_grad[2]
    if grad is None or not (want_image or want_disp or want_affine):
        return None, None, None, None, None, None
    want_source = want_disp or want_affine
    need_image = want_source and ctx.interp == LINEAR
    grad_image, g_y = ctx.backward_op(grad, image if need_image else None, ctx.image_size, disp, affine,
                                      ctx.interp, ctx.padding, [want_image, want_source])
    grad_disp = grad_affine = None
    if want_source:
        nd = g_y.shape[1]
        acc = torch.float32 if g_y.dtype in (torch.float16, torch.bfloat16) else g_y.dtype
        g_acc = g_y.to(acc)
        gy = g_acc.flatten(2)  # (B, nd, P)
        batch = gy.shape[0]
        if want_disp:
            linear = affine[:, :, :nd].to(acc).expand(batch, nd, nd)
            gd = torch.bmm(linear.transpose(1, 2), gy).view(batch, nd, *g_y.shape[2:])
            if disp.shape[0] != batch:
                gd = gd.sum(0, keepdim=True)
            grad_disp = gd.to(disp.dtype)
        if want_affine:
            spatial = g_y.shape[2:]
            gl = torch.zeros(batch, nd, nd, dtype=acc, device=gy.device)
            for j in range(nd):
                others = tuple(2 + i for i in range(nd) if i != j)
                along = g_acc.sum(others) if others else g_acc  # (B, nd, S_j)
                gl[:, :, j] = along @ torch.arange(spatial[j], dtype=acc, device=gy.device)
            if disp is not None:
                d = disp.to(acc).flatten(2).expand(batch, nd, gy.shape[2])
                gl = gl + torch.bmm(gy, d.transpose(1, 2))
            ga = torch.cat([gl, gy.sum(2, keepdim=True)], dim=2)
            if affine.shape[0] != batch:
                ga = ga.sum(0, keepdim=True)
            grad_affine = ga.to(affine.dtype)
    return (grad_image if want_image else None), grad_disp, grad_affine, None, None, None


def _affine_refuse(ctx, *_):
    raise RuntimeError(AFFINE_NOT_TWICE)


# --------------------------------------------------------------------------- mi_histogram
#
# The joint histogram's backward needs the inputs, the mask and the ranges (csrc/common/mi.h,
# Note [Parzen joint histogram]); the MI itself is formed from the histogram by torch ops in
# fastwarp/mi.py, whose autograd gives this op its upstream gradient. Forward mode and second
# derivatives raise.

MI_NO_SECOND_DERIVATIVE = (
    "fastwarp.mi has no second derivative: differentiating its gradient again (double "
    "backward, a Hessian, or forward mode over its gradient) is not implemented"
)


def _mi_setup(namespace, ctx, inputs, output):
    a, b, mask, range_, bins, kernel, sigma = inputs
    ctx.backward_op = getattr(torch.ops, namespace).mi_histogram_backward.default
    ctx.bins, ctx.kernel, ctx.sigma = bins, kernel, sigma
    ctx.save_for_backward(a, b, mask, range_)


def _mi_backward(ctx, grad):
    a, b, mask, range_ = ctx.saved_tensors
    want = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
    ga, gb = ctx.backward_op(grad, a, b, mask, range_, ctx.bins, ctx.kernel, ctx.sigma, want)
    return ga if want[0] else None, gb if want[1] else None, None, None, None, None, None


def _mi_jvp(ctx, *_):
    raise RuntimeError(
        "fastwarp.mi: forward-mode AD (jvp, jacfwd) is not implemented; use reverse mode "
        "(backward, torch.func.grad, vjp or jacrev)"
    )


def _mi_refuse(ctx, *_):
    raise RuntimeError(MI_NO_SECOND_DERIVATIVE)


def _functions(namespace):
    """The autograd.Function of every op of ``namespace``."""
    ops = getattr(torch.ops, namespace)
    return {
        ops.warp.default: _function("WarpFunction", ops.warp.default, _sample_setup, _sample_backward,
                                    _sample_jvp, namespace, False),
        ops.grid_sample.default: _function("GridSampleFunction", ops.grid_sample.default, _sample_setup,
                                           _sample_backward, _sample_jvp, namespace, True),
        ops.warp_backward.default: _function("WarpBackwardFunction", ops.warp_backward.default, _sample_bw_setup,
                                             _sample_bw_backward, _sample_bw_jvp, namespace, False),
        ops.grid_sample_backward.default: _function("GridSampleBackwardFunction", ops.grid_sample_backward.default,
                                                    _sample_bw_setup, _sample_bw_backward, _sample_bw_jvp,
                                                    namespace, True),
        ops.sample_derivative.default: _function("SampleDerivativeFunction", ops.sample_derivative.default,
                                                 _derivative_setup, _sample_derivative_backward,
                                                 _sample_derivative_jvp, namespace, False),
        ops.splat_derivative.default: _function("SplatDerivativeFunction", ops.splat_derivative.default,
                                                _derivative_setup, _splat_derivative_backward,
                                                _splat_derivative_jvp, namespace, True),
        ops.affine_warp.default: _function("AffineWarpFunction", ops.affine_warp.default, _affine_setup,
                                           _affine_backward, _affine_refuse, namespace),
        ops.affine_warp_backward.default: _function("AffineWarpBackwardFunction", ops.affine_warp_backward.default,
                                                    _save_nothing, _affine_refuse, _affine_refuse, namespace),
        ops.ncc.default: _function("NccFunction", ops.ncc.default, _ncc_setup, _ncc_backward, _ncc_jvp, namespace),
        ops.ncc_backward.default: _function("NccBackwardFunction", ops.ncc_backward.default, _save_nothing,
                                            _refuse, _refuse, namespace),
        ops.mi_histogram.default: _function("MiHistogramFunction", ops.mi_histogram.default, _mi_setup,
                                            _mi_backward, _mi_jvp, namespace),
        ops.mi_histogram_backward.default: _function("MiHistogramBackwardFunction",
                                                     ops.mi_histogram_backward.default, _save_nothing,
                                                     _mi_refuse, _mi_refuse, namespace),
    }


def _apply(function, args):
    """``function.apply(*args)`` from inside the op's Autograd kernel, by the Function's own
    C++ apply: the Python wrapper's work (binding defaults by signature inspection, routing
    to functorch) is either done already or wrong here, and cost more than the kernel on
    small inputs.

    Under a functorch transform (grad, jvp, ...) the dispatcher has already brought the
    call to this transform's level: the arguments are that level's tensors, as ATen's own
    autograd kernels see them. autograd.Function.apply would hand the call back to functorch
    (custom_function_call), which can only enter above the dispatcher and finds no kernel
    here; the C++ apply records the node on these tensors (and runs the jvp for a
    forward-mode level), just as an ATen autograd kernel does under functorch. functorch's
    own single-level Functions run the same way (torch/_functorch/autograd_function.py),
    with the same permission set around them."""
    if not torch._C._are_functorch_transforms_active():
        return _cpp_apply(function, args)
    allowed = torch._C._functorch.get_single_level_autograd_function_allowed()
    torch._C._functorch.set_single_level_autograd_function_allowed(True)
    try:
        return _cpp_apply(function, args)
    finally:
        torch._C._functorch.set_single_level_autograd_function_allowed(allowed)


def _cpp_apply(function, args):
    return super(torch.autograd.Function, function).apply(*args)


def _autograd_kernel(op, function):
    # the dispatcher drops trailing arguments equal to their defaults: put them back
    defaults = tuple(a.default_value for a in op._schema.arguments)

    def kernel(keyset, *args):
        if _needs_autograd(args):
            return _apply(function, args + defaults[len(args):])
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    return kernel


# --------------------------------------------------------------------------- batching rules
#
# vmap over any op is one call of the op on the vmapped dimension folded into the batch:
# (B, N, ...) -> (B * N, ...), a tensor that is not vmapped expanded first. The exceptions
# are the coordinates of a warp: a field of batch 1 not vmapped stays shared by every image
# (no copy), and a vmapped field of batch 1 serving N images is expanded to N, its
# gradient summed back. The NCC's "mean" is computed as "batch" and averaged per vmapped
# entry (every volume has the same size, so that is the mean).


def _vmapped(t, dim, size):
    """t with the vmapped dimension first (expanded, when t is not vmapped)."""
    return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)


def _fold(t):
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _unfold(t, size):
    return t.reshape(size, t.shape[0] // size, *t.shape[1:])


def _fold_coords(coords, dim, size, images, grid, shared_ok):
    """The coordinates folded for ``images`` images per vmapped entry; returns (coords,
    expanded) where ``expanded`` says that a field of batch 1 was repeated per image."""
    if dim is None and coords.shape[0] == 1 and not grid and shared_ok:
        return coords, False
    c = _vmapped(coords, dim, size)
    expanded = not grid and c.shape[1] == 1 and images != 1
    if expanded:
        c = c.expand(size, images, *c.shape[2:])
    return _fold(c), expanded


def _sampling_vmap_rules(namespace):
    ops = getattr(torch.ops, namespace)

    def forward_rule(op, grid):
        def rule(info, in_dims, image, coords, interp, *options):
            size = info.batch_size
            x = _vmapped(image, in_dims[0], size)  # (B, N, C, *S)
            c, _ = _fold_coords(coords, in_dims[1], size, x.shape[1], grid, True)
            out, jac = op(_fold(x), c, interp, *options)
            jacobian = bool(options[-1])
            return (_unfold(out, size), _unfold(jac, size) if jacobian else jac), (0, 0 if jacobian else None)

        return rule

    def backward_rule(op, grid):
        def rule(info, in_dims, grad, image, image_size, coords, interp, *options):
            size = info.batch_size
            g = _fold(_vmapped(grad, in_dims[0], size))
            x = _fold(_vmapped(image, in_dims[1], size)) if image is not None else None
            images = image_size[0]
            c, expanded = _fold_coords(coords, in_dims[3], size, images, grid, False)
            gi, gc = op(g, x, [size * images, *image_size[1:]], c, interp, *options)
            mask = options[-1]
            if mask[1]:
                gc = _unfold(gc, size)
                if expanded:
                    gc = gc.sum(1, keepdim=True)
            return (gi if not mask[0] else _unfold(gi, size), gc), (0 if mask[0] else None, 0 if mask[1] else None)

        return rule

    def sample_derivative_rule(info, in_dims, image, coords, kind, *options):
        size = info.batch_size
        x = _vmapped(image, in_dims[0], size)
        c, _ = _fold_coords(coords, in_dims[1], size, x.shape[1], kind == COORD_KIND["grid"], True)
        return _unfold(ops.sample_derivative.default(_fold(x), c, kind, *options), size), 0

    def splat_derivative_rule(info, in_dims, values, image_size, coords, kind, *options):
        size = info.batch_size
        v = _fold(_vmapped(values, in_dims[0], size))
        c, _ = _fold_coords(coords, in_dims[2], size, image_size[0], kind == COORD_KIND["grid"], True)
        out = ops.splat_derivative.default(v, [size * image_size[0], *image_size[1:]], c, kind, *options)
        return _unfold(out, size), 0

    return {
        ops.warp.default: forward_rule(ops.warp.default, False),
        ops.grid_sample.default: forward_rule(ops.grid_sample.default, True),
        ops.warp_backward.default: backward_rule(ops.warp_backward.default, False),
        ops.grid_sample_backward.default: backward_rule(ops.grid_sample_backward.default, True),
        ops.sample_derivative.default: sample_derivative_rule,
        ops.splat_derivative.default: splat_derivative_rule,
    }


def _ncc_vmap_rules(namespace):
    ops = getattr(torch.ops, namespace)
    none, mean, batch = NCC_REDUCTION["none"], NCC_REDUCTION["mean"], NCC_REDUCTION["batch"]

    def forward_rule(info, in_dims, a, b, window, eps, reduction):
        size = info.batch_size
        x, y = _fold(_vmapped(a, in_dims[0], size)), _fold(_vmapped(b, in_dims[1], size))
        out = ops.ncc.default(x, y, window, eps, none if reduction == none else batch)
        out = _unfold(out, size)
        return (out.flatten(1).mean(1) if reduction == mean else out), 0

    def backward_rule(info, in_dims, grad, a, b, window, eps, reduction, mask):
        size = info.batch_size
        x, y = _fold(_vmapped(a, in_dims[1], size)), _fold(_vmapped(b, in_dims[2], size))
        g = _vmapped(grad, in_dims[0], size)
        if reduction == mean:  # d(mean)/d(per-volume mean) = 1 / volumes
            volumes = x.shape[0] // size * x.shape[1]
            g = (g / volumes).reshape(size, 1, 1).expand(size, x.shape[0] // size, x.shape[1])
        ga, gb = ops.ncc_backward.default(_fold(g), x, y, window, eps, none if reduction == none else batch, mask)
        return (_unfold(ga, size) if mask[0] else ga, _unfold(gb, size) if mask[1] else gb), (
            0 if mask[0] else None,
            0 if mask[1] else None,
        )

    return {ops.ncc.default: forward_rule, ops.ncc_backward.default: backward_rule}


def _mi_vmap_rules(namespace):
    ops = getattr(torch.ops, namespace)

    def folded(t, dim, size):
        return None if t is None else _fold(_vmapped(t, dim, size))

    def forward_rule(info, in_dims, a, b, mask, range_, bins, kernel, sigma):
        size = info.batch_size
        x, y = folded(a, in_dims[0], size), folded(b, in_dims[1], size)
        m, r = folded(mask, in_dims[2], size), folded(range_, in_dims[3], size)
        return _unfold(ops.mi_histogram.default(x, y, m, r, bins, kernel, sigma), size), 0

    def backward_rule(info, in_dims, grad, a, b, mask, range_, bins, kernel, sigma, want):
        size = info.batch_size
        g, x, y = (folded(t, d, size) for t, d in zip((grad, a, b), in_dims[:3]))
        m, r = folded(mask, in_dims[3], size), folded(range_, in_dims[4], size)
        ga, gb = ops.mi_histogram_backward.default(g, x, y, m, r, bins, kernel, sigma, want)
        return (_unfold(ga, size) if want[0] else ga, _unfold(gb, size) if want[1] else gb), (
            0 if want[0] else None,
            0 if want[1] else None,
        )

    return {ops.mi_histogram.default: forward_rule, ops.mi_histogram_backward.default: backward_rule}


def _register_vmap(op, rule):
    schema = op._schema

    def with_defaults(info, in_dims, *args):
        args = fill_defaults(schema, args, {})[0]
        in_dims = tuple(in_dims) + (None,) * (len(args) - len(in_dims))
        return rule(info, in_dims, *args)

    torch.library.register_vmap(op, with_defaults, lib=_library(op.namespace))


# --------------------------------------------------------------------------- autocast
#
# The sampling ops follow grid_sample's autocast policy: ATen lists grid_sampler under
# "fp32" on the CPU (floating inputs other than float64 run in float32, so the output is
# float32) and under "promote" on CUDA (the widest floating dtype of the inputs). The NCC
# promotes on both. Outside autocast, mixed dtypes are an error (fastwarp/warp.py), as they
# are for grid_sample.

_LIBRARIES = {}


def _library(namespace, kind="IMPL"):
    if (namespace, kind) not in _LIBRARIES:
        _LIBRARIES[namespace, kind] = torch.library.Library(namespace, kind)
    return _LIBRARIES[namespace, kind]


def _autocast_fp32(a, b):
    cast = [t.float() if t.is_floating_point() and t.dtype != torch.float64 else t for t in (a, b)]
    return cast[0], cast[1]


def _autocast_promote(a, b):
    if a.is_floating_point() and b.dtype != a.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        return a.to(dtype), b.to(dtype)
    return a, b


_AUTOCAST = {
    "warp": {"cpu": _autocast_fp32, "cuda": _autocast_promote},
    "grid_sample": {"cpu": _autocast_fp32, "cuda": _autocast_promote},
    "ncc": {"cpu": _autocast_promote, "cuda": _autocast_promote},
}


def _register_autocast(namespace, name):
    op = getattr(getattr(torch.ops, namespace), name).default
    for device_type, policy in _AUTOCAST[name].items():
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        dispatch_key = getattr(torch._C.DispatchKey, key)

        def cast(a, b, *rest, _key=dispatch_key, _policy=policy):
            a, b = _policy(a, b)
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_key)):
                return op(a, b, *rest)

        if op.has_kernel_for_dispatch_key(dispatch_key):
            op.py_kernels.pop(dispatch_key, None)
        op.py_impl(dispatch_key)(cast)  # the Python dispatcher's (torch.compile) path
        _library(namespace).impl(name, lambda _keyset, *args, _f=cast: _f(*args), key, with_keyset=True)


# --------------------------------------------------------------------------- registration


def register(namespace):
    """Fake kernels, autograd, batching rules and autocast for the ops of ``namespace``:
    ``fastwarp``, and the private twin ``fastwarp_emu`` of the emulated-CUDA test build
    (fastwarp/_emu.py), which has the same schemas."""
    for name, fake in (
        ("warp", _warp_fake),
        ("grid_sample", _grid_sample_fake),
        ("warp_backward", _warp_backward_fake),
        ("grid_sample_backward", _grid_sample_backward_fake),
        ("affine_warp", _affine_warp_fake),
        ("affine_warp_backward", _affine_warp_backward_fake),
        ("sample_derivative", _sample_derivative_fake),
        ("splat_derivative", _splat_derivative_fake),
        ("ncc", _ncc_fake),
        ("ncc_backward", _ncc_backward_fake),
        ("mi_histogram", _mi_histogram_fake),
        ("mi_histogram_backward", _mi_histogram_backward_fake),
    ):
        torch.library.register_fake(f"{namespace}::{name}", fake)
    for op, function in _functions(namespace).items():
        _library(namespace).impl(op._opname, _autograd_kernel(op, function), "Autograd", with_keyset=True)
    rules = {**_sampling_vmap_rules(namespace), **_ncc_vmap_rules(namespace), **_mi_vmap_rules(namespace)}
    for op, rule in rules.items():
        _register_vmap(op, rule)
    for name in _AUTOCAST:
        _register_autocast(namespace, name)


register("fastwarp")
