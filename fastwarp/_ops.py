"""Python side of the fastwarp:: operators: fake (meta) kernels for torch.compile, and
autograd. The schemas and the CPU/CUDA kernels are in csrc/.

Modes and paddings are strings in the public API; the tables below are the only place they
become the integer codes of the schemas (csrc/common/sampling.h mirrors them).
"""

import torch

INTERP = {"linear": 0, "bilinear": 0, "trilinear": 0, "nearest": 1}
PADDING = {"zeros": 0, "border": 1, "reflection": 2}
LINEAR = INTERP["linear"]
NEAREST = INTERP["nearest"]


def has_cuda_kernels() -> bool:
    """Whether this build of fastwarp has CUDA kernels (it was compiled with a toolkit)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastwarp::warp", "CUDA")


# --------------------------------------------------------------------------- fake kernels


@torch.library.register_fake("fastwarp::warp")
def _warp_fake(image, disp, interp, padding):
    return image.new_empty(image.shape)


@torch.library.register_fake("fastwarp::grid_sample")
def _grid_sample_fake(input, grid, interp, padding, align_corners):
    return input.new_empty((*input.shape[:2], *grid.shape[1:-1]))


def _backward_fake(grad_output, image_size, coords, output_mask):
    grad_image = grad_output.new_empty(image_size) if output_mask[0] else grad_output.new_empty(0)
    grad_coords = coords.new_empty(coords.shape) if output_mask[1] else coords.new_empty(0)
    return grad_image, grad_coords


@torch.library.register_fake("fastwarp::warp_backward")
def _warp_backward_fake(grad_output, image, image_size, disp, interp, padding, output_mask):
    return _backward_fake(grad_output, image_size, disp, output_mask)


@torch.library.register_fake("fastwarp::grid_sample_backward")
def _grid_sample_backward_fake(
    grad_output, input, input_size, grid, interp, padding, align_corners, output_mask
):
    return _backward_fake(grad_output, input_size, grid, output_mask)


# --------------------------------------------------------------------------- autograd
#
# Both ops are linear in the image, so the image gradient needs only the coordinates;
# the coordinate gradient also needs the image, which is therefore saved only when that
# gradient is wanted. Nearest sampling is piecewise constant: its coordinate gradient is
# zero and needs no kernel. Second derivatives are not implemented.


def _setup_context(ctx, inputs, output):
    image, coords, interp = inputs[0], inputs[1], inputs[2]
    ctx.interp = interp
    ctx.extra = tuple(inputs[3:])  # padding (and align_corners for grid_sample)
    ctx.image_size = image.shape
    need_image = ctx.needs_input_grad[1] and interp == LINEAR
    ctx.save_for_backward(image if need_image else None, coords)


def _make_backward(backward_op, n_extra):
    def backward(ctx, grad):
        image, coords = ctx.saved_tensors
        want_image, want_coords = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_image = grad_coords = None
        if want_coords and ctx.interp == NEAREST:
            grad_coords = torch.zeros_like(coords)
            want_coords = False
        if want_image or want_coords:
            gi, gc = backward_op(
                grad, image, ctx.image_size, coords, ctx.interp, *ctx.extra, [want_image, want_coords]
            )
            grad_image = gi if want_image else None
            grad_coords = gc if want_coords else grad_coords
        return (grad_image, grad_coords) + (None,) * (1 + n_extra)

    return backward


torch.library.register_autograd(
    "fastwarp::warp",
    _make_backward(torch.ops.fastwarp.warp_backward.default, 1),
    setup_context=_setup_context,
)
torch.library.register_autograd(
    "fastwarp::grid_sample",
    _make_backward(torch.ops.fastwarp.grid_sample_backward.default, 2),
    setup_context=_setup_context,
)
