"""The operators as the dispatcher sees them: opcheck (schema, fake kernels, autograd
registration) and torch.compile(fullgraph=True)."""

import pytest
import torch

import fastwarp
from fastwarp import _emu
from reference import smooth_field


def _warp_samples(device):
    g = torch.Generator().manual_seed(7)
    for nd, shape in ((2, (2, 3, 5, 6)), (3, (1, 2, 4, 5, 3))):
        for interp in (0, 1):
            for padding in (0, 1, 2):
                image = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
                disp = smooth_field((shape[0], nd, *shape[2:]), 1.5, g).to(device)
                yield (image.requires_grad_(), disp.requires_grad_(), interp, padding, False)
                if interp == 0:  # the training path: forward Jacobian, disp gradient only
                    yield (image.detach(), disp, interp, padding, True)
    labels = torch.randint(0, 9, (1, 1, 5, 6), generator=g).to(device)
    yield (labels, torch.randn(1, 2, 5, 6, generator=g).to(device), 1, 0, False)


def _grid_sample_samples(device):
    g = torch.Generator().manual_seed(8)
    for nd, shape in ((2, (2, 3, 5, 6)), (3, (2, 2, 4, 5, 3))):
        for padding in (0, 1, 2):
            for align in (True, False):
                x = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
                grid = (torch.rand((shape[0], 3, 4, 2)[: nd + 1] + (nd,), generator=g, dtype=torch.float64) * 2.2 - 1.1).to(device)
                yield (x.requires_grad_(), grid.requires_grad_(), 0, padding, align, False)
                yield (x.detach(), grid, 0, padding, align, True)


def test_opcheck_warp(device):
    for args in _warp_samples(device):
        torch.library.opcheck(torch.ops.fastwarp.warp.default, args)


def test_opcheck_grid_sample(device):
    for args in _grid_sample_samples(device):
        torch.library.opcheck(torch.ops.fastwarp.grid_sample.default, args)


def test_opcheck_backward_ops(device):
    g = torch.Generator().manual_seed(9)
    image = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64).to(device)
    disp = smooth_field((1, 2, 5, 6), 1.5, g).to(device)
    grad = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64).to(device)
    for mask in ([True, True], [True, False], [False, True]):
        torch.library.opcheck(
            torch.ops.fastwarp.warp_backward.default,
            (grad, image if mask[1] else None, list(image.shape), disp, 0, 1, mask),
        )
    grid = torch.rand(2, 3, 4, 2, generator=g, dtype=torch.float64).to(device) * 2 - 1
    grad = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64).to(device)
    torch.library.opcheck(
        torch.ops.fastwarp.grid_sample_backward.default,
        (grad, image, list(image.shape), grid, 0, 2, False, [True, True]),
    )


@pytest.mark.slow
def test_compile_fullgraph(device):
    """torch.compile traces through the Python API, the op, its fake kernel and its backward."""
    if _emu.active():
        pytest.skip("torch.compile does not trace under the emulation's dispatch mode; the fake kernels are shared")
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(10)
    image = torch.randn(2, 1, 6, 7, 5, generator=g).to(device)
    fixed = torch.randn(2, 1, 6, 7, 5, generator=g).to(device)
    disp0 = smooth_field((2, 3, 6, 7, 5), 2.0, g).float().to(device)

    def loss_fn(image, disp, fixed):
        warped = fastwarp.warp(image, disp, padding_mode="border")
        resampled = fastwarp.grid_sample(fixed, disp.movedim(1, -1).tanh() * 0.9, align_corners=True)
        return (warped - fixed).square().mean() + resampled.abs().mean()

    compiled = torch.compile(loss_fn, fullgraph=True)
    for image_grad in (False, True):  # the training path (forward Jacobian), and both grads
        im_eager = image.clone().requires_grad_(image_grad)
        im_comp = image.clone().requires_grad_(image_grad)
        d_eager = disp0.clone().requires_grad_()
        d_comp = disp0.clone().requires_grad_()
        eager = loss_fn(im_eager, d_eager, fixed)
        comp = compiled(im_comp, d_comp, fixed)
        eager.backward()
        comp.backward()
        torch.testing.assert_close(comp, eager)
        torch.testing.assert_close(d_comp.grad, d_eager.grad)
        if image_grad:
            torch.testing.assert_close(im_comp.grad, im_eager.grad)
