"""Another contrast of one brain, for the multi-modal registration benchmark: a T2-like image
made from a T1 by a non-monotonic intensity map, a smooth bias field and noise."""

from __future__ import annotations

import numpy as np
import torch

from ..fields import smooth_noise

__all__ = ["T2_MAP", "t2_like"]

# The intensity map of the tissue (T1 intensities scaled to [0, 1]; the embedded brains have
# CSF near 0.5, grey matter 0.72, white matter 0.92): 0.25 + 0.7 exp(-((x - 0.47) / 0.28)^2).
# It rises to its peak at 0.47 and falls after it, so CSF becomes the brightest tissue (0.95),
# grey matter 0.59 and white matter 0.33, while the dim partial-volume rim of the brain
# (x ~ 0.1) stays dark (0.37): no monotonic map of the T1 gives this image, as in real T2.
T2_MAP = (0.25, 0.7, 0.47, 0.28)


def t2_like(image: np.ndarray, seed: int = 0, bias: float = 0.15, noise: float = 0.02) -> np.ndarray:
    """A T2-like version of the T1 ``image`` (``(X, Y, Z)`` in [0, 1], background exactly 0):
    the tissue (voxels > 0) through :data:`T2_MAP`, times a smooth multiplicative bias field
    ``exp(bias * n)`` (``n`` unit normal noise on a 4^3 grid, upsampled), plus Gaussian noise of
    ``noise``, clipped at 0 and scaled to a maximum of 1; the background stays 0. Deterministic
    for a ``seed``. float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    base, height, centre, width = T2_MAP
    y = base + height * torch.exp(-(((x - centre) / width) ** 2))
    field = torch.exp(bias * smooth_noise((1, 1, *x.shape), [4] * x.dim(), g)[0, 0])
    y = y * field + noise * torch.randn(x.shape, generator=g)
    y = torch.where(x > 0, y.clamp_min(0), torch.zeros(()))
    return (y / y.max()).numpy()
