"""Bad input gets a clear error naming the argument; hostile coordinates (NaN, Inf, far
outside) never crash or read out of bounds."""

import subprocess
import sys
import textwrap

import pytest
import torch

import fastwarp
from conftest import DEVICES


def img(*shape, dtype=torch.float32):
    return torch.rand(shape, dtype=dtype) + 0.5


@pytest.mark.parametrize(
    "image, disp, exc, match",
    [
        (img(2, 5, 6), img(2, 2, 5, 6), ValueError, r"image must be \(N, C, H, W\) or \(N, C, D, H, W\).*3-D"),
        (img(1, 1, 2, 3, 4, 5), img(1, 4, 2, 3, 4, 5), ValueError, "image must be"),
        (img(1, 1, 5, 6), img(1, 2, 5), ValueError, r"disp must be \(N or 1, 2, H, W\)"),
        (img(1, 1, 5, 6), img(1, 3, 5, 6), ValueError, "disp must have 2 components"),
        (img(1, 1, 4, 5, 6), img(1, 2, 4, 5, 6), ValueError, "disp must have 3 components"),
        (img(1, 1, 5, 6), img(1, 2, 5, 7), ValueError, r"disp spatial shape \(5, 7\) must match image spatial shape \(5, 6\)"),
        (img(3, 1, 5, 6), img(2, 2, 5, 6), ValueError, "disp batch must be 1 or the image batch 3"),
        (img(1, 1, 5, 6), torch.ones(1, 2, 5, 6, dtype=torch.long), TypeError, "disp must be a floating-point tensor"),
        (img(1, 1, 5, 6), img(1, 2, 5, 6)[:, :, :0], ValueError, "disp spatial shape"),
        (img(1, 1, 5, 6).to(torch.complex64), img(1, 2, 5, 6), TypeError, "image must be a real"),
        ("not a tensor", img(1, 2, 5, 6), TypeError, "image must be a torch.Tensor"),
    ],
)
def test_warp_rejects_bad_input(image, disp, exc, match):
    with pytest.raises(exc, match=match):
        fastwarp.warp(image, disp)


def test_warp_rejects_bad_options():
    with pytest.raises(ValueError, match="mode must be one of"):
        fastwarp.warp(img(1, 1, 4, 4), img(1, 2, 4, 4), mode="cubic")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        fastwarp.warp(img(1, 1, 4, 4), img(1, 2, 4, 4), padding_mode="wrap")


def test_device_mismatch_is_named():
    meta = torch.empty(1, 2, 4, 4, device="meta")
    with pytest.raises(ValueError, match="disp is on meta but image is on cpu"):
        fastwarp.warp(img(1, 1, 4, 4), meta)


@pytest.mark.parametrize(
    "inp, grid, match",
    [
        (img(1, 1, 5, 6), img(1, 3, 4, 3), "grid must be .*last dimension must be 2"),
        (img(1, 1, 5, 6), img(1, 3, 4, 1, 2), r"grid must be \(N, H_out, W_out, 2\)"),
        (img(2, 1, 5, 6), img(1, 3, 4, 2), "grid batch 1 must equal input batch 2"),
        (img(1, 1, 0, 6), img(1, 3, 4, 2), "input must have non-empty spatial dimensions"),
        (img(5, 6), img(1, 3, 4, 2), "input must be"),
    ],
)
def test_grid_sample_rejects_bad_input(inp, grid, match):
    with pytest.raises(ValueError, match=match):
        fastwarp.grid_sample(inp, grid)


def test_op_level_checks():
    """Direct callers of torch.ops.fastwarp get TORCH_CHECK errors, not crashes."""
    with pytest.raises(RuntimeError, match="displacement must have 2 channels"):
        torch.ops.fastwarp.warp(img(1, 1, 4, 4), img(1, 3, 4, 4), 0, 0)
    with pytest.raises(RuntimeError, match="padding code"):
        torch.ops.fastwarp.warp(img(1, 1, 4, 4), img(1, 2, 4, 4), 0, 7)
    with pytest.raises(RuntimeError, match="share a dtype"):
        torch.ops.fastwarp.warp(img(1, 1, 4, 4), img(1, 2, 4, 4, dtype=torch.float64), 0, 0)


# Runs in a child process so that a crash (as torch 2.13's own CPU grid_sample backward
# has on NaN grids with border/reflection padding) fails this test instead of killing
# the test session.
HOSTILE = textwrap.dedent(
    """
    import sys, torch, fastwarp
    device = sys.argv[1]
    if device == "cuda_emu":  # the CUDA kernels on the emulated launch, CPU tensors
        from fastwarp._emu import EmulatedCuda
        emulation = EmulatedCuda()
        emulation.__enter__()
        device = "cpu"
    bad = [float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 3.4e38, 1e6]
    for nd in (2, 3):
        shape = (2, 2, 5, 6, 7)[: 2 + nd]
        image = torch.rand(shape, dtype=torch.float64, device=device)
        disp = torch.rand((2, nd, *shape[2:]), dtype=torch.float64, device=device) * 4 - 2
        grid = torch.rand((2, *shape[2:], nd), dtype=torch.float64, device=device) * 2 - 1
        flat_d, flat_g = disp.view(-1), grid.view(-1)
        for i, v in enumerate(bad):
            flat_d[i * 7 % flat_d.numel()] = v
            flat_g[i * 5 % flat_g.numel()] = v
        for padding in ("zeros", "border", "reflection"):
            for mode in ("linear", "nearest"):
                im = image.clone().requires_grad_()
                d = disp.clone().requires_grad_()
                out = fastwarp.warp(im, d, mode, padding)
                out.backward(torch.ones_like(out))
                assert torch.isfinite(out).all(), (nd, padding, mode)
                assert torch.isfinite(im.grad).all() and torch.isfinite(d.grad).all()
                for align in (True, False):
                    im = image.clone().requires_grad_()
                    g = grid.clone().requires_grad_()
                    gmode = "bilinear" if mode == "linear" else mode
                    out = fastwarp.grid_sample(im, g, gmode, padding, align)
                    out.backward(torch.ones_like(out))
                    assert torch.isfinite(out).all(), (nd, padding, mode, align)
                    assert torch.isfinite(im.grad).all() and torch.isfinite(g.grad).all()
    # a NaN point reads 0 in every padding mode
    image = torch.rand(1, 1, 4, 4, device=device) + 1
    disp = torch.zeros(1, 2, 4, 4, device=device)
    disp[0, :, 1, 2] = float("nan")
    for padding in ("zeros", "border", "reflection"):
        out = fastwarp.warp(image, disp, padding_mode=padding)
        assert out[0, 0, 1, 2] == 0 and (out[0, 0, 0] == image[0, 0, 0]).all()
    if sys.argv[1] == "cuda_emu":
        assert emulation.calls["warp"] and emulation.calls["grid_sample_backward"], emulation.calls
    print("survived")
    """
)


@pytest.mark.sanitize
@pytest.mark.parametrize("device", DEVICES)
def test_nan_inf_and_far_coordinates_in_child_process(device):
    proc = subprocess.run([sys.executable, "-c", HOSTILE, device], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"child exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "survived" in proc.stdout
