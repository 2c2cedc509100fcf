"""fastwarp.app.transforms: ITK's geometry and fields against fastwarp's voxels (unequal spacings,
a flipped axis, an offset; checked against SimpleITK's own index -> physical map when it is
installed), and the affine matrix files (plain and ITK) written and read back."""

import importlib.util

import numpy as np
import pytest
import torch

from fastwarp.app.transforms import itk_geometry, itk_to_voxel_displacement, load_matrix, save_matrix

HAS_SITK = importlib.util.find_spec("SimpleITK") is not None

# Voxel -> world (RAS, mm) with unequal spacings, the first axis running right to left and an
# offset: a wrong sign, axis order or spacing in the conversion shows.
AFFINE = np.array([[-2.0, 0.0, 0.0, 30.0],
                   [0.0, 1.5, 0.0, -20.0],
                   [0.0, 0.0, 1.25, 5.0],
                   [0.0, 0.0, 0.0, 1.0]])
SHAPE = (20, 24, 18)


def test_itk_geometry_is_lps_of_the_nifti_affine():
    origin, spacing, direction = itk_geometry(AFFINE)
    np.testing.assert_allclose(spacing, [2.0, 1.5, 1.25])
    idx = np.array([3.0, 5.0, 7.0])
    world = AFFINE[:3, :3] @ idx + AFFINE[:3, 3]
    np.testing.assert_allclose(origin + direction @ (spacing * idx), world * [-1, -1, 1])
    if HAS_SITK:  # SimpleITK's own index -> physical map on an image with that geometry
        import SimpleITK as sitk

        img = sitk.Image([int(s) for s in SHAPE], sitk.sitkFloat32)
        img.SetOrigin(tuple(origin))
        img.SetSpacing(tuple(spacing))
        img.SetDirection(tuple(direction.flatten()))
        np.testing.assert_allclose(img.TransformContinuousIndexToPhysicalPoint(tuple(idx)), world * [-1, -1, 1])


def test_voxel_displacement_from_a_known_physical_field():
    # Axis 0 runs to world -x (to the left) in 2 mm steps, which is LPS +x:
    # 1 mm of LPS x is +1/2 voxel. Axis 1 runs to world +y (anterior), LPS -y, in 1.5 mm steps: 1.5 mm
    # of LPS y is -1 voxel. Axis 2 runs to world +z = LPS +z in 1.25 mm steps: 2.5 mm is +2 voxels.
    u = np.zeros((*SHAPE, 3))
    u[..., 0], u[..., 1], u[..., 2] = 1.0, 1.5, 2.5
    disp = itk_to_voxel_displacement(u, AFFINE)
    assert disp.shape == (1, 3, *SHAPE)
    torch.testing.assert_close(disp[0, :, 0, 0, 0], torch.tensor([0.5, -1.0, 2.0]))


# ------------------------------------------------------------------------- matrix files


def _random_affine(seed, nd):
    r = np.random.default_rng(seed)
    m = np.eye(nd + 1)
    m[:nd, :nd] += r.uniform(-0.2, 0.2, (nd, nd))
    m[:nd, nd] = r.uniform(-20.0, 20.0, nd)
    return m


def _some_matrix(nd):
    m = _random_affine(5, nd)
    m[:nd, nd] += np.arange(1, nd + 1) * 0.123456789
    return m


@pytest.mark.parametrize("nd", [3, 2])
@pytest.mark.parametrize("name", ["affine.mat", "affine.txt", "affine.affine"])
def test_matrix_round_trip(tmp_path, nd, name):
    m = _some_matrix(nd)
    path = save_matrix(tmp_path / name, m)
    assert path == str(tmp_path / name)
    back = load_matrix(path)
    assert back.shape == (nd + 1, nd + 1) and back.dtype == np.float64
    np.testing.assert_allclose(back, m, rtol=0, atol=1e-12)


def test_plain_matrix_file_states_its_convention(tmp_path):
    m = _some_matrix(3)
    text = open(save_matrix(tmp_path / "a.affine", m)).read().splitlines()
    assert text[0].startswith("#") and "RAS" in text[0] and "fixed -> moving" in text[0]
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "a.affine"), m)  # np.loadtxt reads it as is
    (tmp_path / "plain.mat").write_text("\n".join(" ".join(f"{v:.17g}" for v in row) for row in m))  # any name, by content
    np.testing.assert_array_equal(load_matrix(tmp_path / "plain.mat"), m)


def test_itk_file_is_lps_and_its_centre_is_folded_in(tmp_path):
    m = np.eye(4)
    m[:3, :3] = [[1.0, 0.1, 0.2], [0.3, 1.0, 0.4], [0.5, 0.6, 1.0]]
    m[:3, 3] = [1.0, 2.0, 3.0]
    lines = open(save_matrix(tmp_path / "a.txt", m)).read().splitlines()
    assert lines[0] == "#Insight Transform File V1.0"
    assert "Transform: AffineTransform_double_3_3" in lines
    params = [float(v) for v in next(x for x in lines if x.startswith("Parameters:")).split()[1:]]
    # RAS -> LPS negates x and y: the matrix entries that mix z with x or y change sign
    np.testing.assert_allclose(params, [1.0, 0.1, -0.2, 0.3, 1.0, -0.4, -0.5, -0.6, 1.0, -1.0, -2.0, 3.0])
    assert "FixedParameters: 0 0 0" in lines
    # a file written by ITK with a centre c: y = L (x - c) + t + c
    lin, t, c = np.diag([1.1, 0.9, 1.0]), np.array([1.0, -2.0, 0.5]), np.array([10.0, 20.0, 30.0])
    (tmp_path / "itk.txt").write_text(
        "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        f"Parameters: {' '.join(map(str, [*lin.ravel(), *t]))}\nFixedParameters: {' '.join(map(str, c))}\n")
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = lin, t + c - lin @ c
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(load_matrix(tmp_path / "itk.txt"), flip @ lps @ flip)


def test_bad_matrix_files(tmp_path):
    with pytest.raises(ValueError, match="matrix must be 4x4"):
        save_matrix(tmp_path / "a.mat", np.eye(4)[:3])
    (tmp_path / "junk.mat").write_text("# nothing\n1 2 3\n")
    with pytest.raises(ValueError, match="expected a 4x4"):
        load_matrix(tmp_path / "junk.mat")
    good = open(save_matrix(tmp_path / "good.mat", np.eye(4)), "rb").read()
    (tmp_path / "cut.mat").write_bytes(good[:40])
    with pytest.raises(ValueError, match="truncated"):
        load_matrix(tmp_path / "cut.mat")
    with pytest.raises(FileNotFoundError, match="no such transform file"):
        load_matrix(tmp_path / "missing.mat")
    (tmp_path / "euler.txt").write_text("#Insight Transform File V1.0\nTransform: Euler3DTransform_double_3_3\n")
    with pytest.raises(ValueError, match="AffineTransform_double_3_3"):
        load_matrix(tmp_path / "euler.txt")


def test_voxel_and_world_displacements_convert_both_ways():
    """voxel_to_world_displacement is A_lin @ u (hand-computed on an axis-aligned grid with a
    flipped axis), world_to_voxel_displacement its inverse on an oblique grid."""
    from fastwarp.app.transforms import voxel_to_world_displacement, world_to_voxel_displacement

    g = torch.Generator().manual_seed(3)
    u = torch.randn(1, 3, 4, 5, 6, generator=g)
    A = np.diag([-1.5, 2.0, 0.5, 1.0])
    A[:3, 3] = [10.0, -3.0, 7.0]
    world = voxel_to_world_displacement(u, A)
    assert world.shape == (3, 4, 5, 6) and world.dtype == torch.float64
    torch.testing.assert_close(world, u[0].double() * torch.tensor([-1.5, 2.0, 0.5], dtype=torch.float64).view(3, 1, 1, 1))
    torch.testing.assert_close(world_to_voxel_displacement(voxel_to_world_displacement(u, AFFINE), AFFINE), u,
                               rtol=0, atol=1e-5)
