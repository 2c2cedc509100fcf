"""Functional API of the warp: ``warp`` (voxel-unit displacement fields) and
``grid_sample`` (a drop-in for ``torch.nn.functional.grid_sample``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch.overrides import handle_torch_function, has_torch_function_variadic

from ._errors import ArgumentError, ArgumentTypeError, UnsupportedDtypeError
from ._ops import INTERP, NEAREST, PADDING, has_cuda_kernels, want_jacobian

__all__ = ["warp", "grid_sample"]

_WARP_MODES = ("linear", "bilinear", "trilinear", "nearest")
_GRID_MODES = ("bilinear", "nearest")


# Errors are fastwarp/_errors.py's: each is both the Python type named in the docstrings
# and the RuntimeError (or NotImplementedError) that torch's grid_sample raises for the same
# mistake.


def _code(table, value, name, allowed):
    if value not in allowed:
        raise ArgumentError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return table[value]


def _check_tensor(name, t):
    if not isinstance(t, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_image(name, image, layout):
    _check_tensor(name, image)
    if image.dim() not in (4, 5):
        raise ArgumentError(f"{name} must be {layout}, got a {image.dim()}-D tensor of shape {tuple(image.shape)}")
    if image.is_complex() or not (image.is_floating_point() or image.dtype == torch.bool or _is_integer(image)):
        raise UnsupportedDtypeError(f"{name} must be a real floating-point or integer tensor, got {image.dtype}")


def _is_integer(t):
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _check_coords(name, coords, image_name, image, layout):
    _check_tensor(name, coords)
    if coords.dim() != image.dim():
        raise ArgumentError(
            f"{name} must be {layout} for a {image.dim()}-D {image_name}, "
            f"got a {coords.dim()}-D tensor of shape {tuple(coords.shape)}"
        )
    if not coords.is_floating_point():
        raise ArgumentTypeError(f"{name} must be a floating-point tensor, got {coords.dtype}")
    if coords.device != image.device:
        raise ArgumentError(f"{name} is on {coords.device} but {image_name} is on {image.device}; they must share a device")
    if coords.device.type not in ("cpu", "cuda", "meta"):
        raise ArgumentError(f"fastwarp runs on cpu and cuda tensors, got {name} on {coords.device}")
    if coords.device.type == "cuda" and not has_cuda_kernels():
        raise RuntimeError(
            "fastwarp was built without CUDA kernels, so it cannot run on cuda tensors: reinstall it on a "
            "machine with the CUDA toolkit (or with FASTWARP_CUDA=1 and CUDA_HOME set), see README.md"
        )


def _check_field(name, field, image_name, image, layout, meaning):
    """A vector field on ``image``'s grid: checked as coordinates, with one component per
    spatial axis in dim 1 (``meaning`` says what a component is)."""
    _check_coords(name, field, image_name, image, layout)
    nd = image.dim() - 2
    if field.shape[1] != nd:
        raise ArgumentError(f"{name} must have {nd} components in dim 1 ({meaning}), got shape {tuple(field.shape)}")


def _check_dtypes(image, coords, interp, image_name, coords_name):
    """Floating images and coordinates must share a dtype, as for grid_sample; under
    torch.autocast the op's autocast kernel casts them as autocast does grid_sample's
    (fastwarp/_ops.py: float32 on the CPU, the wider dtype on CUDA). Integer label maps keep
    their dtype and use float32 or float64 coordinates."""
    if image.is_floating_point():
        if image.dtype != coords.dtype and not torch.is_autocast_enabled(image.device.type):
            raise ArgumentTypeError(
                f"{image_name} and {coords_name} must have the same dtype, as in "
                f"torch.nn.functional.grid_sample: got {image_name} {image.dtype} and {coords_name} "
                f"{coords.dtype}; convert one (e.g. {coords_name}.to({image_name}.dtype)), or run "
                "under torch.autocast, which casts them as it casts grid_sample's inputs"
            )
        return image, coords
    if interp != NEAREST:
        raise UnsupportedDtypeError(
            f"{image_name} has dtype {image.dtype}: integer and bool images (label maps) can only be "
            "sampled with mode='nearest'; convert to floating point for linear interpolation"
        )
    if coords.dtype not in (torch.float32, torch.float64):
        coords = coords.float()
    return image, coords


def warp(
    image: torch.Tensor,
    disp: torch.Tensor | None,
    mode: str = "linear",
    padding_mode: str = "zeros",
    *,
    affine: torch.Tensor | None = None,
    out_shape: Sequence[int] | None = None,
) -> torch.Tensor:
    r"""Resample ``image`` at ``p + disp(p)``: the warp layer of deformable registration;
    with ``affine``, at ``A (p + disp(p))`` on an output grid of any shape.

    Args:
        image: ``(N, C, H, W)`` or ``(N, C, D, H, W)``. Floating point, or an integer/bool
            label map with ``mode="nearest"`` (it comes back with its own dtype, exactly).
        disp: displacement field in **voxel units**, ``(N or 1, 2, H, W)`` or
            ``(N or 1, 3, D, H, W)``, floating point. Channel ``k`` displaces spatial axis
            ``k`` (``0`` is D in 3-D, H in 2-D): VoxelMorph's convention, the same result as
            ``voxelmorph``'s ``SpatialTransformer`` (``align_corners=True``). A field with
            batch 1 serves every image of the batch.
        mode: ``"linear"`` (bilinear in 2-D, trilinear in 3-D; ``"bilinear"`` and
            ``"trilinear"`` are accepted aliases) or ``"nearest"``.
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"``, as in
            ``torch.nn.functional.grid_sample`` with ``align_corners=True``.

    Returns:
        The warped image, ``(N, C, *spatial)``, contiguous, in the dtype of ``image``. A
        floating ``image`` and ``disp`` must share a dtype, as in ``grid_sample``; under
        ``torch.autocast`` they are cast as autocast casts ``grid_sample``'s inputs (float32 on
        the CPU, the wider dtype on CUDA).

    Affine (FireANTs' fused affine sampler; no sampling grid is built in memory):
        affine: ``(ndim, ndim + 1)``, or ``(N or 1, ndim, ndim + 1)`` for one matrix per
            image; a square homogeneous matrix is accepted too (its last row is not read).
            It maps an output point, in **voxel indices** of the output grid and the axis
            order of ``disp``'s channels (D, H, W), to a voxel index of ``image``: the image
            is sampled at ``A[:, :ndim] @ (p + disp(p)) + A[:, ndim]``, or at ``A p`` with
            ``disp=None``. ``affine_grid``'s ``theta`` (normalized ``(x, y, z)``) converts to
            it by the two grids' index-to-normalized maps and an axis reversal.
        out_shape: the output's spatial shape; by default ``disp``'s (which it must match),
            or ``image``'s when ``disp`` is None. ``disp`` lives on the output grid.
        Gradients flow to ``image``, ``disp`` and ``affine``. Second derivatives and forward
        mode through the affine form raise; so does vmap.

    Gradients flow to ``image`` and to ``disp``, each computed only when required; the
    image gradient is deterministic under ``torch.use_deterministic_algorithms(True)``.
    Derivatives of every order, forward mode and the functorch transforms work too. With
    ``padding_mode="zeros"`` a point whose source lies more than a voxel outside the image
    reads 0 and passes no gradient; with "border" and "reflection" the source is clamped or
    reflected into the image first, as in grid_sample. A NaN source reads 0 and passes no
    gradient in every mode.
    """
    interp = _code(INTERP, mode, "mode", _WARP_MODES)
    padding = _code(PADDING, padding_mode, "padding_mode", tuple(PADDING))
    _check_image("image", image, "(N, C, H, W) or (N, C, D, H, W)")
    if affine is not None:
        return _affine_warp(image, disp, affine, out_shape, interp, padding)
    if out_shape is not None:
        raise ArgumentError("out_shape is for the affine form: without affine= the output grid is disp's")
    if disp is None:
        raise ArgumentTypeError("disp must be a torch.Tensor (it may be None only with affine=)")
    nd = image.dim() - 2
    layout = "(N or 1, 2, H, W)" if nd == 2 else "(N or 1, 3, D, H, W)"
    _check_field("disp", disp, "image", image, layout, f"one displacement per spatial axis of the {nd}-D image")
    if disp.shape[2:] != image.shape[2:]:
        raise ArgumentError(
            f"disp spatial shape {tuple(disp.shape[2:])} must match image spatial shape {tuple(image.shape[2:])}"
        )
    if disp.shape[0] not in (1, image.shape[0]):
        raise ArgumentError(f"disp batch must be 1 or the image batch {image.shape[0]}, got {disp.shape[0]}")
    image, disp = _check_dtypes(image, disp, interp, "image", "disp")
    jacobian = want_jacobian(image, disp, interp)
    return torch.ops.fastwarp.warp(image, disp, interp, padding, jacobian)[0]


def _affine_warp(image, disp, affine, out_shape, interp, padding):
    """warp's affine form (csrc/common/sampling.h, Note [Affine sampling])."""
    nd = image.dim() - 2
    n = image.shape[0]
    _check_tensor("affine", affine)
    if not affine.is_floating_point():
        raise ArgumentTypeError(f"affine must be a floating-point tensor, got {affine.dtype}")
    if affine.dim() not in (2, 3) or affine.shape[-1] != nd + 1 or affine.shape[-2] not in (nd, nd + 1):
        raise ArgumentError(
            f"affine must be ({nd}, {nd + 1}) or (N or 1, {nd}, {nd + 1}) (or square homogeneous) for a "
            f"{nd}-D image, got shape {tuple(affine.shape)}"
        )
    if affine.dim() == 2:
        affine = affine.unsqueeze(0)
    affine = affine[:, :nd]
    if affine.shape[0] not in (1, n):
        raise ArgumentError(f"affine batch must be 1 or the image batch {n}, got {affine.shape[0]}")
    if affine.device != image.device:
        raise ArgumentError(f"affine is on {affine.device} but image is on {image.device}; they must share a device")
    if disp is not None:
        layout = f"(N or 1, {nd}, *out_shape)"
        _check_field("disp", disp, "image", image, layout, f"one displacement per spatial axis of the {nd}-D output")
        if disp.shape[0] not in (1, n):
            raise ArgumentError(f"disp batch must be 1 or the image batch {n}, got {disp.shape[0]}")
        if out_shape is not None and tuple(out_shape) != tuple(disp.shape[2:]):
            raise ArgumentError(f"out_shape {tuple(out_shape)} must be disp's spatial shape {tuple(disp.shape[2:])}")
        out_shape = tuple(disp.shape[2:])
        image, disp = _check_dtypes(image, disp, interp, "image", "disp")
        coord_dtype = disp.dtype
    else:
        if out_shape is None:
            out_shape = tuple(image.shape[2:])
        coord_dtype = image.dtype if image.is_floating_point() else (
            affine.dtype if affine.dtype in (torch.float32, torch.float64) else torch.float32)
        if image.is_floating_point() is False and interp != NEAREST:
            _check_dtypes(image, affine, interp, "image", "affine")  # raises the label-map message
    try:
        out_shape = tuple(int(s) for s in out_shape)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"out_shape must be a sequence of {nd} integers, got {out_shape!r}") from None
    if len(out_shape) != nd or min(out_shape) < 0:
        raise ArgumentError(f"out_shape must be {nd} sizes >= 0, got {out_shape}")
    if 0 in image.shape[2:] and 0 not in (n, image.shape[1], *out_shape):
        raise ArgumentError(
            f"image must have non-empty spatial dimensions for the affine to point into, got shape {tuple(image.shape)}"
        )
    return torch.ops.fastwarp.affine_warp(image, disp, affine.to(coord_dtype), list(out_shape), interp, padding)


def grid_sample(
    input: torch.Tensor,
    grid: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool | None = None,
) -> torch.Tensor:
    r"""Drop-in for :func:`torch.nn.functional.grid_sample` on fastwarp's kernels.

    Same arguments and result: ``input`` ``(N, C, H_in, W_in)`` or ``(N, C, D_in, H_in, W_in)``,
    ``grid`` ``(N, H_out, W_out, 2)`` or ``(N, D_out, H_out, W_out, 3)`` holding normalized
    ``(x, y[, z])`` in ``[-1, 1]``; output ``(N, C, *out_spatial)``. ``mode`` is
    ``"bilinear"`` (trilinear for 5-D) or ``"nearest"``; ``"bicubic"`` runs torch's own
    kernel (``torch.grid_sampler``, which no patch of ``torch.nn.functional`` reaches).
    ``align_corners=None`` means ``False`` and warns, as in torch. Integer/bool inputs are
    accepted with ``mode="nearest"`` and keep their dtype.

    torch's contracts hold: empty batches, channels and output grids give empty outputs;
    bad arguments raise exceptions that ``except RuntimeError`` catches, as torch's do
    (fastwarp/_errors.py); gradients of every order and forward-mode AD are right;
    autocast casts as it does for grid_sample; tensor subclasses with
    ``__torch_function__`` see the call.
    """
    if has_torch_function_variadic(input, grid):
        return handle_torch_function(
            grid_sample, (input, grid), input, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners
        )
    interp = _code(INTERP | {"bicubic": 2}, mode, "mode", _GRID_MODES + ("bicubic",))
    padding = _code(PADDING, padding_mode, "padding_mode", tuple(PADDING))
    if align_corners is None:
        warnings.warn(
            "Default grid_sample and affine_grid behavior has changed to align_corners=False since 1.3.0. "
            "Please specify align_corners=True if the old behavior is desired. "
            "See the documentation of grid_sample for details.",
            stacklevel=2,
        )
        align_corners = False
    if mode == "bicubic":
        return torch.grid_sampler(input, grid, interp, padding, bool(align_corners))
    _check_image("input", input, "(N, C, H, W) or (N, C, D, H, W)")
    nd = input.dim() - 2
    layout = "(N, H_out, W_out, 2)" if nd == 2 else "(N, D_out, H_out, W_out, 3)"
    _check_coords("grid", grid, "input", input, layout)
    if grid.shape[-1] != nd:
        raise ArgumentError(f"grid must be {layout}: its last dimension must be {nd}, got shape {tuple(grid.shape)}")
    if grid.shape[0] != input.shape[0]:
        raise ArgumentError(f"grid batch {grid.shape[0]} must equal input batch {input.shape[0]}")
    if 0 in input.shape[2:]:
        raise ArgumentError(
            f"input must have non-empty spatial dimensions for the grid to point into, got shape {tuple(input.shape)}"
        )
    input, grid = _check_dtypes(input, grid, interp, "input", "grid")
    jacobian = want_jacobian(input, grid, interp)
    return torch.ops.fastwarp.grid_sample(input, grid, interp, padding, bool(align_corners), jacobian)[0]
