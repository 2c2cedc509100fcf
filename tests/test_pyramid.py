"""fastwarp.app.pyramid: block averages, the reduced grid's affine, and fields moved between
pyramid grids (Note [Pyramid grids]), against hand-computed positions and a smooth field."""

import numpy as np
import pytest
import torch

from fastwarp.app.pyramid import reduce, reduced_affine, reduced_size, rescale_field


def test_reduce_averages_blocks_and_partial_blocks(gen):
    x = torch.rand(1, 2, 9, 8, 7, generator=gen, dtype=torch.float64)
    y = reduce(x, 2)
    assert y.shape == (1, 2, *reduced_size((9, 8, 7), 2)) == (1, 2, 5, 4, 4)
    torch.testing.assert_close(y[0, 1, 1, 2, 0], x[0, 1, 2:4, 4:6, 0:2].mean())
    torch.testing.assert_close(y[0, 0, 4, 3, 3], x[0, 0, 8:9, 6:8, 6:7].mean())  # the partial blocks
    assert reduce(x, 1) is x


@pytest.mark.parametrize("factor", [2, 3])
def test_reduced_affine_puts_voxels_at_block_centres(factor):
    affine = np.array([[-1.5, 0.1, 0.0, 10.0], [0.0, 2.0, 0.3, -4.0], [0.2, 0.0, 1.25, 7.0], [0, 0, 0, 1.0]])
    small = reduced_affine(affine, factor)
    for ijk in [(0, 0, 0), (1, 2, 3)]:
        block = [np.array([factor * i + a, factor * j + b, factor * k + c, 1.0]) for i, j, k in [ijk]
                 for a in range(factor) for b in range(factor) for c in range(factor)]
        centre = np.mean([affine @ p for p in block], axis=0)
        np.testing.assert_allclose(small @ np.array([*ijk, 1.0]), centre, atol=1e-12)
    # a 2-D image with the 4x4 affine of a 2-D NIfTI file: only the first two axes shrink
    flat = reduced_affine(np.diag([3.0, 2.0, 1.0, 1.0]), 3, ndim=2)
    np.testing.assert_allclose(flat @ [0, 0, 0, 1], [3.0, 2.0, 0.0, 1.0])
    np.testing.assert_allclose(flat[:3, 2], [0, 0, 1])


def test_rescale_field_follows_the_grids():
    # a field that moves every point by the same world distance: 1 voxel on a grid 2x finer
    u = torch.full((1, 3, 4, 5, 3), 1.0)
    up = rescale_field(u, 2, (8, 10, 6))
    torch.testing.assert_close(up, torch.full((1, 3, 8, 10, 6), 2.0))
    torch.testing.assert_close(rescale_field(up, 0.5, (4, 5, 3)), u)
    assert rescale_field(u, 1, (4, 5, 3)) is u
    # a linear field (the identity map's displacement of a zoom) is kept exactly where the
    # grids' voxel centres overlap, also for sizes that are not multiples (7 -> 4 at ratio 1/2)
    fine = torch.arange(7, dtype=torch.float64).view(1, 1, 7, 1)  # u(x) = x along axis 0
    coarse = rescale_field(fine.expand(1, 2, 7, 1).contiguous(), 0.5, (4, 1))
    # coarse voxel i sits at fine 2i + 0.5, where u = 2i + 0.5, in coarse voxels half that
    torch.testing.assert_close(coarse[0, 0, :3, 0], (2 * torch.arange(3.0, dtype=torch.float64) + 0.5) / 2)
    assert coarse[0, 0, 3, 0] == 6 / 2  # beyond the last centre: the edge value


def _np_rescale(field, ratio, size):
    """Reference: per axis, linear interpolation at (i + 0.5) / ratio - 0.5 of the old grid
    (np.interp holds the edge values beyond the end voxels), then the vectors scaled."""
    out = np.asarray(field, dtype=np.float64)
    for axis, n_new in enumerate(size):
        dim = axis + 2
        pos = (np.arange(n_new) + 0.5) / ratio - 0.5
        out = np.apply_along_axis(lambda line: np.interp(pos, np.arange(line.size), line), dim, out)
    return out * ratio


@pytest.mark.parametrize("src, size, ratio", [
    ((9, 7, 5), (18, 14, 10), 2),   # exact multiples
    ((9, 7, 5), (17, 13, 9), 2),    # odd full sizes: the last voxel dropped
    ((5, 4, 3), (19, 13, 12), 4),
    ((7, 5), (13, 9), 2),           # 2-D
    ((5, 6), (15, 17), 3),
    ((6, 5, 4), (3, 3, 2), 0.5),    # downsampling (the general path)
    ((6, 5, 4), (9, 8, 6), 1.5),
])
def test_rescale_field_matches_a_reference_and_gradcheck(src, size, ratio, gen):
    field = torch.randn(1, len(src), *src, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(rescale_field(field, ratio, size),
                               torch.from_numpy(_np_rescale(field.numpy(), ratio, size)))
    small = field[..., :4, :3] if len(src) == 2 else field[..., :3, :3, :2]
    small_size = tuple(max(1, int(s * ratio)) for s in small.shape[2:])
    torch.autograd.gradcheck(lambda f: rescale_field(f, ratio, small_size), (small.clone().requires_grad_(True),))
