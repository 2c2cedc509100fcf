"""Augmentation of training images: random smooth diffeomorphic deformations (integrated on
fastwarp's warp) and random intensity changes, every draw from a given generator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...nn import VecInt
from ...warp import warp
from ..fields import smooth_noise

__all__ = ["augment", "random_deformation", "random_velocity", "random_affines", "augment_intensity", "blur"]


def _smooth_noise(shape: Sequence[int], spacing: float, channels: int, g: torch.Generator) -> torch.Tensor:
    """A smooth random field (1, channels, *shape) of unit scale, one node every ``spacing`` voxels."""
    return smooth_noise((1, channels, *shape), [max(2, int(round(s / spacing)) + 1) for s in shape], g)


def random_deformation(shape: Sequence[int], g: torch.Generator, max_disp: float = 4.0, spacing: float = 6.0,
                       nsteps: int = 5, velocity: torch.Tensor | None = None) -> torch.Tensor:
    """A random smooth diffeomorphic displacement (1, ndim, *shape) in voxels: a smooth random
    velocity (nodes ``spacing`` voxels apart, s.d. ``max_disp / 2``) integrated by scaling and
    squaring on fastwarp's warp, at half resolution for fields of 32 voxels or more a side
    (the field is smooth at that scale, and the data workers then keep up with a GPU).
    ``velocity``: integrate this one (as :func:`random_velocity` draws it) instead of drawing."""
    shape = tuple(int(s) for s in shape)
    half = min(shape) >= 32
    vel = random_velocity(shape, g, max_disp, spacing) if velocity is None else velocity
    with torch.no_grad():
        disp = VecInt(None, nsteps)(vel)
        if half:
            mode = "bilinear" if len(shape) == 2 else "trilinear"
            disp = 2.0 * F.interpolate(disp, size=shape, mode=mode, align_corners=False)
    return disp


def random_velocity(shape: Sequence[int], g: torch.Generator, max_disp: float = 4.0, spacing: float = 6.0) -> torch.Tensor:
    """The velocity :func:`random_deformation` integrates, on its grid: half of ``shape`` (rounded
    up), in that grid's voxels, for fields of 32 voxels or more a side; else ``shape``, in voxels."""
    shape = tuple(int(s) for s in shape)
    half = min(shape) >= 32
    work = tuple((s + 1) // 2 for s in shape) if half else shape
    return _smooth_noise(work, spacing / (2 if half else 1), len(shape), g) * (max_disp / (4.0 if half else 2.0))


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (1, 1, *spatial) with s.d. ``sigma`` voxels."""
    if sigma <= 0.05:
        return x
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    ndim = x.dim() - 2
    conv = F.conv2d if ndim == 2 else F.conv3d
    for axis in range(ndim):
        shape = [1, 1] + [1] * ndim
        shape[2 + axis] = 2 * r + 1
        pad = [0] * ndim
        pad[axis] = r
        x = conv(x, k.reshape(shape), padding=tuple(pad))
    return x


def augment_intensity(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Blur (s.d. up to one voxel, half the time), gamma, a smooth multiplicative bias field,
    contrast/brightness and a little noise, on an image in [0, 1]; clipped to [0, 1]. The
    blur teaches a model trained on one brain that a sharp scan and a blurry template (the
    MNI152 average) can show the same anatomy."""
    rnd = lambda: float(torch.randn((), generator=g))  # noqa: E731
    if float(torch.rand((), generator=g)) < 0.5:
        x = blur(x, float(torch.rand((), generator=g)) * strength)
    x = x.clamp_min(0) ** float(np.exp(0.25 * strength * rnd()))
    bias = torch.exp(0.1 * strength * _smooth_noise(x.shape[2:], 24.0, 1, g))
    x = x * bias * (1.0 + 0.1 * strength * rnd()) + 0.02 * strength * rnd()
    x = x + 0.01 * strength * torch.randn(x.shape, generator=g)
    return x.clamp(0.0, 1.0)


def augment(image: torch.Tensor, labels: torch.Tensor | None, g: torch.Generator,
            max_disp: float = 4.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``image`` (1, 1, *spatial) and its ``labels`` under one :func:`random_deformation`
    (labels warped nearest), then the image under :func:`augment_intensity`."""
    disp = random_deformation(image.shape[2:], g, max_disp)
    image = augment_intensity(warp(image, disp), g)
    if labels is not None:
        labels = warp(labels, disp, mode="nearest")
    return image, labels


def random_affines(n: int, shape: Sequence[int], g: torch.Generator, degrees: float = 0.0, scale: float = 0.0,
                   shift: float = 0.0) -> np.ndarray:
    """``n`` random affine maps of a 3-D grid, ``(n, 4, 4)`` homogeneous voxel -> voxel, about the
    grid's centre: rotations by up to ``degrees`` about each axis, scales 1 +- ``scale`` per axis,
    shifts up to ``shift`` voxels per axis, each uniform; then shifted so that their mean is the
    identity (the maps a template's ``--affine`` registrations find, and average, for subjects
    ``B(M_i^-1 p)``)."""

    if len(shape) != 3:
        raise ValueError(f"random_affines: shape must be 3-D, got {tuple(shape)}")

    def draw(r):
        return (torch.rand(3, generator=g, dtype=torch.float64).numpy() * 2 - 1) * r

    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    maps = np.zeros((n, 4, 4))
    for i in range(n):
        R = np.eye(3)
        for axis, angle in enumerate(np.radians(draw(degrees))):
            a, b = [j for j in range(3) if j != axis]
            turn = np.eye(3)
            turn[a, a] = turn[b, b] = np.cos(angle)
            turn[a, b], turn[b, a] = -np.sin(angle), np.sin(angle)
            R = turn @ R
        R = R @ np.diag(1 + draw(scale))
        maps[i, :3, :3], maps[i, :3, 3], maps[i, 3, 3] = R, centre - R @ centre + draw(shift), 1
    return maps - (maps.mean(0) - np.eye(4))
