"""fastwarp.app.affine: a known random affine is recovered from an analytic phantom (on one grid,
between two grids of other shapes, voxel sizes, origins and axis directions, with NCC and MSE,
in 3-D and 2-D); the embedded Colin27 -> MNI152 pair stays near the identity without losing
Dice; resample, the matrix files in both formats, and errors that name the argument.

The phantom is defined in world millimetres, so the moving image is sampled exactly from the
moved phantom (no interpolation of the fixed image): a head-shaped ellipsoid holding smaller
ones, with a cosine texture, exactly 0 outside the head as in skull-stripped scans.
"""

import sys

import numpy as np
import pytest
import torch

import fastwarp
from fastwarp.app.affine import AffineConfig, AffineResult, affine_coords, affine_register, resample
from fastwarp.app.metrics import dice

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------- the phantom


def grid_affine(spacing, origin):
    """A voxel -> world affine ((ndim + 1) square) with the given (signed) spacings and origin."""
    nd = len(spacing)
    aff = np.diag([*spacing, 1.0])
    aff[:nd, nd] = origin
    return aff


def world_points(shape, affine):
    """World coordinates (ndim, *shape), float64, of every voxel of a grid."""
    nd = len(shape)
    p = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij"))
    a = torch.as_tensor(affine, dtype=torch.float64)
    return torch.einsum("ij,j...->i...", a[:nd, :nd], p) + a[:nd, nd].view(nd, *([1] * nd))


def phantom(x, radii, seed=0):
    """The phantom at world points ``x`` (ndim, *S), its head centred at 0 with half-axes
    ``radii`` (mm): float32, in [0, ~1.5], exactly 0 outside the head."""
    r = np.random.default_rng(seed)
    nd = x.shape[0]
    size = float(np.mean(radii))

    def ellipsoid(centre, axes, width):  # 1 inside, 0 outside, a smoothstep edge of ~width mm
        d = ((x - torch.as_tensor(centre).view(nd, *([1] * nd))) /
             torch.as_tensor(axes).view(nd, *([1] * nd))).square().sum(0).sqrt()
        t = ((1 - d) * float(np.mean(axes)) / width).clamp(0, 1)
        return t * t * (3 - 2 * t)

    image = 0.4 * ellipsoid(np.zeros(nd), radii, 0.1 * size)
    for _ in range(10):
        image = image + r.uniform(-0.3, 0.5) * ellipsoid(r.uniform(-0.6, 0.6, nd) * radii,
                                                         r.uniform(0.13, 0.33, nd) * size, 0.1 * size)
    texture = 0
    for _ in range(6):
        k = r.normal(size=nd)
        k *= 2 * np.pi / (r.uniform(0.27, 0.67) * size) / np.linalg.norm(k)
        texture = texture + torch.cos(torch.einsum("i,i...->...", torch.as_tensor(k), x) + r.uniform(0, 2 * np.pi))
    return (image * (1 + 0.3 * texture / 6 ** 0.5)).float()


def moved_phantom(matrix, shape, affine, radii):
    """The phantom moved by the world point map ``matrix`` (the fixed -> moving map that makes
    the moving image: moving(y) = phantom(matrix⁻¹ y)), sampled on the grid (shape, affine)."""
    nd = len(shape)
    inv = torch.as_tensor(np.linalg.inv(matrix))
    y = world_points(shape, affine)
    return phantom(torch.einsum("ij,j...->i...", inv[:nd, :nd], y) + inv[:nd, nd].view(nd, *([1] * nd)), radii)


def random_affine(seed, nd=3, rot=10.0, scale=0.1, shear=0.03, trans=6.0, centre=None):
    """A random world affine about ``centre``: rotation up to ``rot`` degrees about each axis,
    scaling within ±scale, shear within ±shear, translation within ±trans (world units)."""
    r = np.random.default_rng(seed)
    angles = np.deg2rad(r.uniform(-rot, rot, 3 if nd == 3 else 1))
    rotation = np.eye(nd)
    for axis, a in enumerate(angles):
        i, j = [(1, 2), (0, 2), (0, 1)][axis] if nd == 3 else (0, 1)
        g = np.eye(nd)
        g[i, i] = g[j, j] = np.cos(a)
        g[i, j], g[j, i] = -np.sin(a), np.sin(a)
        rotation = rotation @ g
    shearing = np.eye(nd) + np.triu(r.uniform(-shear, shear, (nd, nd)), 1)
    lin = rotation @ np.diag(1 + r.uniform(-scale, scale, nd)) @ shearing
    c = np.zeros(nd) if centre is None else np.asarray(centre, dtype=np.float64)
    m = np.eye(nd + 1)
    m[:nd, :nd] = lin
    m[:nd, nd] = c - lin @ c + r.uniform(-trans, trans, nd)
    return m


def coords_error(result, matrix, fixed_shape, moving_affine, fixed_affine, inside):
    """Largest distance (moving voxels), over the fixed voxels ``inside``, between the moving
    coordinates found and those of ``matrix``."""
    true = affine_coords(matrix, fixed_shape, moving_affine, fixed_affine)
    return float((result.coords - true).norm(dim=1)[0][inside].max())


# ------------------------------------------------------------------------- recovery

FIXED_SHAPE = (40, 48, 36)
HEAD = np.array([15.0, 18.0, 13.5])  # voxels of the fixed grid


@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_a_known_affine_on_one_grid(seed):
    # no affines: the world is the voxel grid; the phantom and the transform centred on the image
    centre = (np.array(FIXED_SHAPE) - 1) / 2
    at_centre = grid_affine((1.0, 1.0, 1.0), -centre)  # phantom coordinates of each voxel
    truth = random_affine(seed, trans=3.0, centre=centre)  # ~10°, ±10 %, 3 % shear, 3 voxels
    fixed = phantom(world_points(FIXED_SHAPE, at_centre), HEAD)
    moving = moved_phantom(at_centre @ truth @ np.linalg.inv(at_centre), FIXED_SHAPE, at_centre, HEAD)

    result = affine_register(moving, fixed)

    assert isinstance(result, AffineResult)
    assert result.matrix.shape == (4, 4) and result.matrix.dtype == np.float64
    np.testing.assert_allclose(result.matrix[:3, :3], truth[:3, :3], atol=0.02)
    np.testing.assert_allclose(result.matrix[:3, 3], truth[:3, 3], atol=0.5)
    np.testing.assert_array_equal(result.matrix[3], [0, 0, 0, 1])
    assert coords_error(result, truth, FIXED_SHAPE, None, None, fixed > 0) < 0.5
    # the layouts, and the three views of the map agree
    assert result.coords.shape == result.disp.shape == (1, 3, *FIXED_SHAPE)
    assert result.coords.dtype == result.disp.dtype == torch.float32
    assert result.warped.shape == FIXED_SHAPE
    torch.testing.assert_close(result.coords, affine_coords(result.matrix, FIXED_SHAPE))
    torch.testing.assert_close(fastwarp.warp(moving[None, None], result.disp)[0, 0], result.warped,
                               atol=1e-5, rtol=1e-5)
    assert float((result.warped - fixed).square().mean()) < 0.02 * float(fixed.square().mean())
    assert result.loss < -0.3  # -NCC
    assert [f for f, _ in result.steps] == [4, 2, 1] and all(0 < n <= i for (_, n), i in
                                                            zip(result.steps, AffineConfig().iterations))


# the fixed grid: 2 mm, RAS, centred; the moving one: 1.5 mm, x flipped (LAS), its own shape and origin
FIXED_GRID = grid_affine((2.0, 2.0, 2.0), (-39.0, -47.0, -35.0))
MOVING_GRID = grid_affine((-1.5, 1.5, 1.5), (50.0, -55.0, -45.0))
MOVING_SHAPE = (68, 76, 60)
HEAD_MM = 2 * HEAD


@pytest.mark.parametrize("similarity", ["ncc", "mse", "mi"])
def test_recovers_a_known_affine_between_grids(similarity):
    truth = random_affine(2)  # about the world origin, the head's centre; 6 mm
    fixed = phantom(world_points(FIXED_SHAPE, FIXED_GRID), HEAD_MM)
    moving = moved_phantom(truth, MOVING_SHAPE, MOVING_GRID, HEAD_MM)
    # the centres of mass are 10 mm and more apart in voxels: the start must come from the world
    result = affine_register(moving[None, None], fixed, MOVING_GRID, FIXED_GRID, AffineConfig(similarity=similarity))

    np.testing.assert_allclose(result.matrix[:3, :3], truth[:3, :3], atol=0.02)
    np.testing.assert_allclose(result.matrix[:3, 3], truth[:3, 3], atol=0.5)  # mm
    assert coords_error(result, truth, FIXED_SHAPE, MOVING_GRID, FIXED_GRID, fixed > 0) < 0.5
    assert result.coords.shape == (1, 3, *FIXED_SHAPE) and result.warped.shape == FIXED_SHAPE
    # a label map of the moving image comes onto the fixed grid with resample(mode="nearest"),
    # as the true map brings it
    moving_labels = (moving > 0).to(torch.int16) + (moving > 0.5).to(torch.int16)
    warped_labels = resample(moving_labels, result.coords, mode="nearest")
    assert warped_labels.dtype == torch.int16 and warped_labels.shape == FIXED_SHAPE
    true_labels = resample(moving_labels, affine_coords(truth, FIXED_SHAPE, MOVING_GRID, FIXED_GRID), mode="nearest")
    # (MI lands a little farther on this small phantom: 0.26 voxel on average against 0.14 for
    # NCC and MSE, so its nearest-neighbour labels agree a little less)
    assert min(dice(warped_labels, true_labels).values()) > (0.93 if similarity == "mi" else 0.95)
    assert dice((warped_labels > 0).to(torch.int16), (fixed > 0).to(torch.int16))[1] > 0.95


def test_mi_recovers_a_known_affine_between_contrasts():
    """The moving image in another contrast: its tissue intensities remapped by a
    non-monotonic curve (bright becomes dark and back), which MI follows and MSE cannot."""
    truth = random_affine(4)
    fixed = phantom(world_points(FIXED_SHAPE, FIXED_GRID), HEAD_MM)
    moving = moved_phantom(truth, MOVING_SHAPE, MOVING_GRID, HEAD_MM)
    moving = torch.where(moving > 0, 0.2 + torch.sin(3.0 * moving) ** 2, moving)
    result = affine_register(moving[None, None], fixed, MOVING_GRID, FIXED_GRID, AffineConfig(similarity="mi"))
    np.testing.assert_allclose(result.matrix[:3, :3], truth[:3, :3], atol=0.02)
    np.testing.assert_allclose(result.matrix[:3, 3], truth[:3, 3], atol=0.5)  # mm
    assert coords_error(result, truth, FIXED_SHAPE, MOVING_GRID, FIXED_GRID, fixed > 0) < 0.5


def test_register_similarity_mi_recovers_a_known_affine_between_contrasts(tmp_path, capsys):
    """``fastwarp register --affine --refine --similarity mi`` on NIfTI files of two contrasts:
    the affine it writes is the known one, and the refinement after it keeps the overlap."""
    import nibabel as nib

    from fastwarp.app import cli
    from fastwarp.app.transforms import load_matrix

    truth = random_affine(5)
    fixed = phantom(world_points(FIXED_SHAPE, FIXED_GRID), HEAD_MM)
    moving = moved_phantom(truth, MOVING_SHAPE, MOVING_GRID, HEAD_MM)
    moving = torch.where(moving > 0, 0.2 + torch.sin(3.0 * moving) ** 2, moving)
    paths = {}
    for name, image, grid in (("moving", moving, MOVING_GRID), ("fixed", fixed, FIXED_GRID)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(image.numpy().astype(np.float32), grid), paths[name])
    out, js = tmp_path / "w.nii.gz", tmp_path / "m.json"
    rc = cli.main(["register", paths["moving"], paths["fixed"], "--affine", "--refine", "5", "--diffeomorphic",
                   "--similarity", "mi", "--output", str(out), "--json", str(js), "--device", "cpu", "-q"])
    assert rc == 0, capsys.readouterr()
    matrix = load_matrix(tmp_path / "w_affine.txt")
    np.testing.assert_allclose(matrix[:3, :3], truth[:3, :3], atol=0.02)
    np.testing.assert_allclose(matrix[:3, 3], truth[:3, 3], atol=0.5)  # mm
    warped = torch.as_tensor(np.asarray(nib.load(out).dataobj))
    assert warped.shape == fixed.shape and bool(torch.isfinite(warped).all())
    # the warped moving image covers the fixed head (the contrasts differ, the support does not)
    inside, covered = fixed > 0, warped > 0.05
    assert float((inside & covered).sum()) / float(inside.sum()) > 0.95


def test_recovers_a_known_affine_in_2d():
    fixed_grid = grid_affine((1.0, 1.2), (-40.0, -50.0))
    moving_grid = grid_affine((1.5, -1.1), (-45.0, 60.0))
    radii = np.array([30.0, 36.0])
    truth = random_affine(3, nd=2, trans=4.0)
    fixed = phantom(world_points((80, 84), fixed_grid), radii)
    moving = moved_phantom(truth, (64, 110), moving_grid, radii)
    # a 2-D image takes a 3x3 affine, or the 4x4 of a 2-D NIfTI file (a plane of constant z)
    nifti = np.eye(4)
    nifti[np.ix_([0, 1, 3], [0, 1, 3])] = fixed_grid
    nifti[2, 3] = 12.0

    result = affine_register(moving, fixed, moving_grid, nifti)

    assert result.matrix.shape == (3, 3)
    np.testing.assert_allclose(result.matrix[:2, :2], truth[:2, :2], atol=0.02)
    np.testing.assert_allclose(result.matrix[:2, 2], truth[:2, 2], atol=0.5)
    assert coords_error(result, truth, (80, 84), moving_grid, fixed_grid, fixed > 0) < 0.5
    assert result.coords.shape == (1, 2, 80, 84) and result.warped.shape == (80, 84)


def test_embedded_pair_stays_near_identity_and_keeps_dice():
    from fastwarp.app.data import embedded, load_volume

    atlas, colin = (load_volume(s.image, s.labels) for s in embedded())
    result = affine_register(torch.from_numpy(colin.image), torch.from_numpy(atlas.image), colin.affine, atlas.affine)
    # both are in MNI space already: what is left is small
    np.testing.assert_allclose(result.matrix[:3, :3], np.eye(3), atol=0.05)
    assert np.abs(result.matrix[:3, 3]).max() < 4.0  # mm
    identity = affine_coords(np.eye(4), atlas.shape, colin.affine, atlas.affine)
    moving_labels, fixed_labels = torch.from_numpy(colin.labels), torch.from_numpy(atlas.labels)
    before = dice(resample(moving_labels, identity, "nearest"), fixed_labels)
    after = dice(resample(moving_labels, result.coords, "nearest"), fixed_labels)
    assert np.mean(list(after.values())) >= np.mean(list(before.values())) - 0.005


def test_deterministic_and_progress(capsys, monkeypatch):
    fixed = phantom(world_points(FIXED_SHAPE, FIXED_GRID), HEAD_MM)
    moving = moved_phantom(random_affine(4), FIXED_SHAPE, FIXED_GRID, HEAD_MM)
    config = AffineConfig(levels=(4, 2), iterations=15)
    first = affine_register(moving, fixed, FIXED_GRID, FIXED_GRID, config, progress=True)
    assert capsys.readouterr().err == ""  # no bar into a log (stderr is not a terminal here)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    second = affine_register(moving, fixed, FIXED_GRID, FIXED_GRID, config, progress=True)
    np.testing.assert_array_equal(first.matrix, second.matrix)
    assert first.loss == second.loss
    assert "affine" in capsys.readouterr().err  # the tqdm bar, on a terminal


def test_no_steps_aligns_the_centres_of_mass():
    # iterations=0: the start, the identity moved by the difference of the world centres of mass
    fixed = phantom(world_points(FIXED_SHAPE, FIXED_GRID), HEAD_MM)
    shift = grid_affine((1.0, 1.0, 1.0), (7.0, -5.0, 3.0))
    moving = moved_phantom(shift, MOVING_SHAPE, MOVING_GRID, HEAD_MM)
    result = affine_register(moving, fixed, MOVING_GRID, FIXED_GRID, AffineConfig(iterations=0))
    np.testing.assert_allclose(result.matrix[:3, :3], np.eye(3))
    np.testing.assert_allclose(result.matrix[:3, 3], [7.0, -5.0, 3.0], atol=0.3)
    assert result.steps == ((4, 0), (2, 0), (1, 0))


def test_levels_too_coarse_for_the_image_are_skipped():
    image = phantom(world_points((20, 22, 18), grid_affine((3.0, 3.0, 3.0), (-28.5, -31.5, -25.5))), HEAD_MM)
    result = affine_register(image, image, config=AffineConfig(iterations=5))
    assert [f for f, _ in result.steps] == [2, 1]  # 20 / 4 < 8 voxels
    np.testing.assert_allclose(result.matrix, np.eye(4), atol=0.1)


# ------------------------------------------------------------------------- resample


def test_resample_identity_layouts_and_labels(gen):
    image = torch.rand(6, 7, 5, generator=gen)
    same = affine_coords(np.eye(4), image.shape)
    torch.testing.assert_close(resample(image, same), image)
    batch = torch.rand(2, 3, 6, 7, 5, generator=gen)
    torch.testing.assert_close(resample(batch, same), batch)
    # a shift of one voxel along the last axis, out of the image reads 0 (or the border)
    shifted = same.clone()
    shifted[:, 2] += 1
    torch.testing.assert_close(resample(image, shifted)[..., :-1], image[..., 1:])
    assert float(resample(image, shifted)[..., -1].abs().max()) == 0
    torch.testing.assert_close(resample(image, shifted, padding_mode="border")[..., -1], image[..., -1])
    labels = torch.randint(0, 4, (6, 7, 5), generator=gen)
    half = same + 0.3
    out = resample(labels, half, mode="nearest")
    assert out.dtype == labels.dtype
    torch.testing.assert_close(out[:-1, :-1, :-1], labels[:-1, :-1, :-1])
    # onto a grid of another shape (2-D): every other voxel
    flat = torch.rand(9, 11, generator=gen)
    coarse = affine_coords(np.eye(3), (5, 6), np.eye(3), np.diag([2.0, 2.0, 1.0]))
    torch.testing.assert_close(resample(flat, coarse), flat[::2, ::2])


# ------------------------------------------------------------------------- matrix files


# ------------------------------------------------------------------------- bad input

IMG3 = torch.rand(12, 12, 12)


@pytest.mark.parametrize("moving, fixed, kwargs, error, match", [
    (IMG3, torch.rand(12, 12), {}, ValueError, "both must be 2-D or both 3-D"),
    (torch.rand(12, 12, 12, 2), IMG3, {}, ValueError, "moving must be a 2-D or 3-D image"),
    (IMG3, torch.rand(2, 1, 12, 12, 12), {}, ValueError, "fixed must be a 2-D or 3-D image"),
    (IMG3, torch.rand(12, 1, 12), {}, ValueError, "fixed must have at least 2 voxels"),
    (IMG3.numpy(), IMG3, {}, TypeError, "moving must be a torch.Tensor"),
    (IMG3, IMG3.to(torch.int32), {}, TypeError, "fixed must be a floating-point image"),
    (IMG3, IMG3, {"moving_affine": np.eye(3)}, ValueError, "moving_affine must be a 4x4 matrix for a 3-D image"),
    (IMG3, IMG3, {"fixed_affine": np.eye(4)[:3]}, ValueError, "fixed_affine must be a 4x4 matrix"),
    (IMG3, IMG3, {"fixed_affine": np.diag([1.0, 0.0, 1.0, 1.0])}, ValueError, "fixed_affine is singular"),
    (IMG3, IMG3, {"moving_affine": np.full((4, 4), np.nan)}, ValueError, "moving_affine must hold finite"),
    (IMG3, IMG3, {"moving_affine": np.ones((4, 4))}, ValueError, "moving_affine must be homogeneous"),
    (IMG3[0], IMG3[0], {"moving_affine": np.eye(4)[[0, 2, 1, 3]]}, ValueError, "plane of constant z"),
    (IMG3, IMG3, {"config": {"levels": (2, 1)}}, TypeError, "config must be an AffineConfig"),
    (IMG3, IMG3, {"config": AffineConfig(levels=(16,), iterations=1)}, ValueError, "config.levels: reduced by 16"),
])
def test_bad_input(moving, fixed, kwargs, error, match):
    with pytest.raises(error, match=match):
        affine_register(moving, fixed, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"similarity": "cc"}, "similarity must be one of 'ncc', 'mse', 'mi'"),
    ({"window": 4}, "window must be a positive odd integer"),
    ({"levels": (4, 0)}, "levels must be positive integers"),
    ({"iterations": (10, 10)}, r"iterations must be one integer >= 0 or one per level \(3\)"),
    ({"iterations": -1}, "iterations must be"),
    ({"lr": 0.0}, "lr must be positive"),
    ({"patience": 0}, "patience a positive integer"),
    ({"mi_bins": 2000}, r"mi_bins must be an integer in \[4, 1024\], got 2000"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AffineConfig(**kwargs)


def test_bad_resample(tmp_path):
    coords = affine_coords(np.eye(4), (4, 4, 4))
    with pytest.raises(TypeError, match="mode='nearest'"):
        resample(torch.zeros(4, 4, 4, dtype=torch.int64), coords)
    with pytest.raises(ValueError, match="coords must be"):
        resample(torch.zeros(4, 4, 4), coords[:, :2])
    with pytest.raises(ValueError, match="mode must be 'linear' or 'nearest'"):
        resample(torch.zeros(4, 4, 4), coords, mode="cubic")
