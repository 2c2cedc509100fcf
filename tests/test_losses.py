"""fastwarp.losses: NCC against the float64 conv reference, MSE, VoxelMorph's Grad."""

import pytest
import torch

from fastwarp.losses import MSE, NCC, Grad
from reference import ncc_reference


def pair(shape, gen, dtype=torch.float64):
    a = torch.rand(shape, generator=gen, dtype=torch.float64)
    b = 0.6 * a + 0.4 * torch.rand(shape, generator=gen, dtype=torch.float64)  # correlated
    return a.to(dtype), b.to(dtype)


def test_losses(gen):
    a, b = pair((2, 1, 8, 9, 7), gen)
    torch.testing.assert_close(NCC(5)(a, b), -ncc_reference(a, b, (5, 5, 5)).mean())
    torch.testing.assert_close(MSE()(a, b), ((a - b) ** 2).mean())
    disp = torch.randn(2, 3, 8, 9, 7, generator=gen, dtype=torch.float64)
    # VoxelMorph's Grad: mean |forward difference| per axis, averaged over the axes
    d = [disp[:, :, 1:] - disp[:, :, :-1], disp[:, :, :, 1:] - disp[:, :, :, :-1], disp[..., 1:] - disp[..., :-1]]
    torch.testing.assert_close(Grad("l1")(disp), sum(x.abs().mean() for x in d) / 3)
    torch.testing.assert_close(Grad("l2", loss_mult=2.0)(disp), 2.0 * sum((x * x).mean() for x in d) / 3)
    with pytest.raises(ValueError, match="penalty"):
        Grad("l3")
    assert "window=5" in repr(NCC(5))
