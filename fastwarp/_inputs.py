"""Argument checks that the similarity ops share (fastwarp.ncc, fastwarp.mi)."""

from __future__ import annotations

import torch

from ._errors import ArgumentError, ArgumentTypeError
from ._ops import has_cuda_kernels


def check_image_pair(a, b) -> None:
    """``a`` and ``b``: tensors of one shape ``(N, C, H, W)`` or ``(N, C, D, H, W)``, floating
    point, on one device that fastwarp has kernels for, and of one dtype unless
    ``torch.autocast`` is on (the caller, or the op's autocast kernel, then casts them). A
    clear ArgumentError / ArgumentTypeError (ValueError / TypeError, and RuntimeError) names
    what is wrong."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if a.dim() not in (4, 5):
        raise ArgumentError(f"a must be (N, C, H, W) or (N, C, D, H, W), got a {a.dim()}-D tensor of shape {tuple(a.shape)}")
    if b.shape != a.shape:
        raise ArgumentError(f"b must have the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    if not a.is_floating_point() or not b.is_floating_point():
        raise ArgumentTypeError(f"a and b must be floating point, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ArgumentError(f"b is on {b.device} but a is on {a.device}; they must share a device")
    if a.dtype != b.dtype and not torch.is_autocast_enabled(a.device.type):
        raise ArgumentTypeError(
            f"a and b must share a dtype, got {a.dtype} and {b.dtype}; convert one, or run under "
            "torch.autocast, which promotes them to the wider dtype"
        )
    if a.device.type == "cuda" and not has_cuda_kernels():
        raise RuntimeError("fastwarp was built without CUDA kernels, so it cannot run on cuda tensors (see README.md)")
