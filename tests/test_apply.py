"""Transforms that travel (fastwarp.app.transforms, .apply, .inverse; `fastwarp apply`,
`fastwarp register --transform/--inverse`): ITK displacement fields written and read against
hand-computed vectors, chains of transforms against a known analytic truth on oblique and
flipped grids, the registration's own files reproducing its warped image, inverses, bad inputs;
and with antspyx (when installed) ANTs reading fastwarp's files and fastwarp reading ANTs'."""

import importlib.util
import os

import numpy as np
import pytest
import torch

from fastwarp import grid_sample
from fastwarp.app.apply import apply_files, apply_transforms
from fastwarp.app.cli import main
from fastwarp.app.inverse import inverse_consistency, inverse_of_velocity, invert_displacement
from fastwarp.app.transforms import (AffineTransform, FieldTransform, grid_points, load_displacement_field,
                                     load_matrix, load_transform, save_displacement_field, save_matrix,
                                     transform_points, world_to_voxel_displacement)

HAS_ANTS = importlib.util.find_spec("ants") is not None
needs_ants = pytest.mark.skipif(not HAS_ANTS, reason="antspyx is not installed")


def _oblique(spacing, origin, angle=0.3, flip=True):
    """A voxel -> RAS affine: unequal spacings, rotated about z, the first axis flipped."""
    c, s = np.cos(angle), np.sin(angle)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    if flip:
        R = R @ np.diag([-1.0, 1.0, 1.0])
    A = np.eye(4)
    A[:3, :3] = R @ np.diag(spacing)
    A[:3, 3] = origin
    return A


FIXED_A = _oblique([1.5, 1.25, 2.0], [20.0, -15.0, -10.0])
MOVING_A = _oblique([1.2, 1.4, 1.6], [-18.0, -22.0, -14.0], angle=-0.2, flip=False)
FIXED_SHAPE, MOVING_SHAPE = (17, 19, 13), (23, 21, 18)


def _smooth(points: np.ndarray) -> np.ndarray:
    """A smooth function of the world point (RAS mm), (3, *P) -> (*P)."""
    x, y, z = points
    return np.sin(x / 9.0) + np.cos(y / 11.0) * np.sin(z / 7.0 + 0.3) + 0.01 * x


def _image_of(shape, affine):
    pts = grid_points(shape, affine).numpy()
    return _smooth(pts).astype(np.float32)


def _world_affine(seed=0):
    r = np.random.default_rng(seed)
    W = np.eye(4)
    W[:3, :3] += r.uniform(-0.08, 0.08, (3, 3))
    W[:3, 3] = r.uniform(-3, 3, 3)
    return W


def _smooth_disp(shape, seed=1, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 3, 4, 4, 4, generator=g)
    return scale * torch.nn.functional.interpolate(noise, size=shape, mode="trilinear", align_corners=True)


# ------------------------------------------------------------------------- ITK fields on disk


def test_field_file_is_itk_layout_in_lps_mm(tmp_path):
    import nibabel as nib

    u = _smooth_disp(FIXED_SHAPE)
    path = save_displacement_field(tmp_path / "w.nii.gz", u, FIXED_A)
    img = nib.load(path)
    assert img.shape == (*FIXED_SHAPE, 1, 3)
    assert img.header.get_intent()[0] == "vector" and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, FIXED_A, atol=1e-5)
    data = np.asarray(img.dataobj)[:, :, :, 0, :]
    # by hand: the RAS vector A_lin u, then x and y negated (LPS)
    p = (3, 5, 7)
    ras = FIXED_A[:3, :3] @ u[0, :, p[0], p[1], p[2]].double().numpy()
    np.testing.assert_allclose(data[p], ras * [-1, -1, 1], rtol=1e-5, atol=1e-5)
    back = load_displacement_field(path)
    assert back.shape == FIXED_SHAPE and back.on_grid(FIXED_SHAPE, FIXED_A)
    np.testing.assert_allclose(back.displacement[:, p[0], p[1], p[2]].numpy(), ras, rtol=1e-5, atol=1e-5)


def test_field_2d_round_trip(tmp_path):
    import nibabel as nib

    A = np.diag([1.5, -2.0, 1.0, 1.0])
    u = torch.randn(1, 2, 9, 11)
    path = save_displacement_field(tmp_path / "w2.nii.gz", u, A)
    assert nib.load(path).shape == (9, 11, 1, 1, 2)
    back = load_displacement_field(path)
    assert back.nd == 2
    expected = torch.einsum("ij,jxy->ixy", torch.tensor([[1.5, 0.0], [0.0, -2.0]]), u[0])
    torch.testing.assert_close(back.displacement, expected, rtol=1e-5, atol=1e-5)


def test_field_is_interpolated_as_itk_does_off_its_grid():
    d = torch.randn(3, 6, 7, 5)
    A = _oblique([2.0, 1.0, 1.5], [1.0, 2.0, 3.0])
    f = FieldTransform(d, A)
    pts = grid_points((6, 7, 5), A)
    torch.testing.assert_close(f(pts), pts + d.double(), rtol=0, atol=1e-5)  # at the grid points: exact
    # halfway between two voxels along axis 1: the mean of the two; past half a voxel outside: not displaced
    idx = torch.tensor([[2.0, 2.0], [3.5, -0.7], [1.0, 1.0]], dtype=torch.float64)
    Ai = torch.as_tensor(A, dtype=torch.float64)
    world = Ai[:3, :3] @ idx + Ai[:3, 3:]
    out = f(world) - world
    torch.testing.assert_close(out[:, 0], 0.5 * (d[:, 2, 3, 1] + d[:, 2, 4, 1]).double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[:, 1], torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------------------- affine files


def test_ants_mat_file_with_a_centre_and_float_parameters(tmp_path):
    # ITK's MATLAB layout as ANTs writes it: AffineTransform_float_3_3 stored as float32 (type 10)
    lin, t, c = np.array([[1.1, 0.05, 0.0], [0.0, 0.95, 0.1], [0.02, 0.0, 1.0]]), [1.0, -2.0, 0.5], [10.0, 20.0, 30.0]

    def var(name, values, kind):
        v = np.asarray(values, dtype="<f8" if kind == 0 else "<f4")
        key = name.encode() + b"\0"
        return np.array([kind, v.size, 1, 0, len(key)], "<i4").tobytes() + key + v.tobytes()

    (tmp_path / "ants.mat").write_bytes(var("AffineTransform_float_3_3", [*lin.ravel(), *t], 10) + var("fixed", c, 10))
    lps = np.eye(4)
    lps[:3, :3] = lin
    lps[:3, 3] = np.array(t) + np.array(c) - lin @ c
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(load_matrix(tmp_path / "ants.mat"), flip @ lps.astype(np.float32).astype(np.float64)
                               @ flip, atol=1e-5)
    inv = load_transform(f"[{tmp_path / 'ants.mat'},1]")
    np.testing.assert_allclose(inv.matrix @ load_matrix(tmp_path / "ants.mat"), np.eye(4), atol=1e-12)


# ------------------------------------------------------------------------- chains, against a known truth


def test_apply_chain_against_the_analytic_image(tmp_path):
    """A moving image that is a smooth function f of the world point, resampled through [field,
    affine] onto an oblique reference, is f(W(x + d(x))) up to linear interpolation's error."""
    W = _world_affine()
    u = _smooth_disp(FIXED_SHAPE)
    save_matrix(tmp_path / "a.txt", W)
    save_displacement_field(tmp_path / "w.nii.gz", u, FIXED_A)
    moving = _image_of(MOVING_SHAPE, MOVING_A)
    out = apply_transforms(moving, MOVING_A, FIXED_SHAPE, FIXED_A, [tmp_path / "w.nii.gz", tmp_path / "a.txt"])
    x = grid_points(FIXED_SHAPE, FIXED_A).numpy()
    d = np.einsum("ij,j...->i...", FIXED_A[:3, :3], u[0].double().numpy())
    y = np.einsum("ij,j...->i...", W[:3, :3], x + d) + W[:3, 3].reshape(3, 1, 1, 1)
    truth = _smooth(y)
    # only where y lies inside the moving image (away from its edge)
    idx = np.einsum("ij,j...->i...", np.linalg.inv(MOVING_A)[:3, :3], y) + np.linalg.inv(MOVING_A)[:3, 3].reshape(3, 1, 1, 1)
    inside = np.all((idx > 0.5) & (idx < np.array(MOVING_SHAPE).reshape(3, 1, 1, 1) - 1.5), axis=0)
    assert inside.mean() > 0.3
    err = np.abs(out.numpy() - truth)[inside]
    assert err.max() < 0.03, err.max()  # linear interpolation of f on ~1.4 mm voxels
    # the other order is a different map, and visibly so
    other = apply_transforms(moving, MOVING_A, FIXED_SHAPE, FIXED_A, [tmp_path / "a.txt", tmp_path / "w.nii.gz"])
    assert np.abs(other.numpy() - truth)[inside].max() > 0.1


@pytest.mark.parametrize("grid", ["oblique", "axis-aligned"])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("field", [None, "memory", "file"])
def test_fused_chains_agree_with_the_grid(tmp_path, field, order, grid):
    """Affines only, or a field on the reference grid followed by affines, sample through
    warp(..., affine=) with no grid (_fused_form), in the file's axis order when the field was
    read from a file or the image is Fortran-ordered (Note [Sampling in the file's order]); the
    grid path of Note [Applying a chain] gives the same image for the same map: linear, nearest
    and label."""
    from fastwarp.app.apply import _fused_form, _fused_operands, _sampling_grid

    fixed_a = FIXED_A if grid == "oblique" else np.diag([-1.5, 1.25, -2.0, 1.0])
    if grid != "oblique":
        fixed_a[:3, 3] = [20.0, -15.0, 10.0]
    W1, W2 = AffineTransform(_world_affine(5)), AffineTransform(_world_affine(6))
    chain = [W1, W2.inverse()]
    if field is not None:
        d = _smooth_disp(FIXED_SHAPE)[0] * 1.5
        if field == "file":
            save_displacement_field(tmp_path / "w.nii.gz", world_to_voxel_displacement(d, fixed_a), fixed_a)
            f = load_displacement_field(tmp_path / "w.nii.gz")
            assert f.file_order is not None and f.file_order.shape == (3, *FIXED_SHAPE[::-1])
            torch.testing.assert_close(f.displacement, d, rtol=1e-5, atol=1e-5)
            f = load_displacement_field(tmp_path / "w.nii.gz")  # the RAS array not made yet
        else:
            f = FieldTransform(d, fixed_a)
        chain = [f] + chain
    moving = _image_of(MOVING_SHAPE, MOVING_A)
    moving = np.asfortranarray(moving) if order == "F" else np.ascontiguousarray(moving)
    fused = _fused_form(MOVING_A, FIXED_SHAPE, fixed_a, chain)
    axes = _fused_operands(*fused, torch.as_tensor(moving), FIXED_SHAPE, "cpu")[2]
    assert axes == ((2, 1, 0) if field == "file" or (field is None and order == "F") else (0, 1, 2))
    grid_ = _sampling_grid(MOVING_SHAPE, MOVING_A, FIXED_SHAPE, fixed_a, chain, "cpu")
    want = grid_sample(torch.as_tensor(np.ascontiguousarray(moving)).float()[None, None], grid_, align_corners=True)[0, 0]
    got = apply_transforms(moving, MOVING_A, FIXED_SHAPE, fixed_a, chain)
    assert got.shape == FIXED_SHAPE and (want != 0).float().mean() > 0.3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    labels = torch.as_tensor(np.round(moving * 5).astype(np.int16))
    want_nearest = grid_sample(labels.contiguous()[None, None], grid_, "nearest", align_corners=True)[0, 0]
    near = apply_transforms(labels, MOVING_A, FIXED_SHAPE, fixed_a, chain, "nearest")
    assert near.dtype == torch.int16 and (near == want_nearest).float().mean() > 0.999
    assert (apply_transforms(labels, MOVING_A, FIXED_SHAPE, fixed_a, chain, "label") == near).float().mean() > 0.9
    # a field elsewhere in the chain, or off the reference grid, takes the grid
    assert _fused_form(MOVING_A, FIXED_SHAPE, fixed_a, chain[::-1]) is None or field is None


def test_inverted_affine_in_a_chain_undoes_it():
    W = AffineTransform(_world_affine(3))
    pts = grid_points(FIXED_SHAPE, FIXED_A)
    back = transform_points([W, W.inverse()], pts)
    torch.testing.assert_close(back, pts, rtol=0, atol=1e-9)


def test_labels_keep_their_dtype_and_values():
    labels = np.zeros(MOVING_SHAPE, np.int16)
    labels[4:15, 3:17, 2:12] = 3
    labels[8:12, 6:10, 4:9] = 7
    W = AffineTransform(_world_affine(4))
    for mode in ("nearest", "label"):
        out = apply_transforms(labels, MOVING_A, FIXED_SHAPE, FIXED_A, [W], mode)
        assert out.dtype == torch.int16 and set(out.unique().tolist()) <= {0, 3, 7} and (out == 7).any()
    near = apply_transforms(labels, MOVING_A, FIXED_SHAPE, FIXED_A, [W], "nearest")
    lab = apply_transforms(labels, MOVING_A, FIXED_SHAPE, FIXED_A, [W], "label")
    assert (near == lab).float().mean() > 0.9  # they differ only along the edges


# ------------------------------------------------------------------------- the registration's own files


def _nifti(path, array, affine):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return str(path)


def _brainish(shape, affine, seed):
    """A blob image with structure at several scales, as a function of the world point."""
    pts = grid_points(shape, affine).numpy()
    r = np.linalg.norm(pts / np.array([14.0, 12.0, 10.0]).reshape(3, 1, 1, 1), axis=0)
    img = np.clip(1.2 - r, 0, 1) * (0.6 + 0.4 * np.sin(pts[0] / 4.0) * np.cos(pts[1] / 5.0))
    return img.astype(np.float32)


def test_register_writes_transforms_that_apply_reproduces(tmp_path):
    """`fastwarp register --affine --refine --diffeomorphic --inverse` on two oblique grids: its
    warp and affine, through `fastwarp apply`, give its warped image; the inverse chain maps
    the fixed image back onto the moving grid where the forward chain's inverse says."""
    import nibabel as nib

    fixed = _nifti(tmp_path / "f.nii.gz", _brainish(FIXED_SHAPE, FIXED_A, 0), FIXED_A)
    W = _world_affine(5)
    moving_img = _brainish(MOVING_SHAPE, MOVING_A, 1)
    moving = _nifti(tmp_path / "m.nii.gz", moving_img, MOVING_A)
    out, prefix = str(tmp_path / "out.nii.gz"), str(tmp_path / "reg")
    rc = main(["register", moving, fixed, "--affine", "--refine", "3", "--diffeomorphic", "-o", out, "--transform",
               prefix, "--inverse", "--device", "cpu", "-q", "--json", str(tmp_path / "m.json")])
    assert rc == 0
    for suffix in ("_warp.nii.gz", "_inverse_warp.nii.gz", "_affine.txt", "_inverse_affine.txt"):
        assert os.path.exists(prefix + suffix), suffix
    warped = np.asarray(nib.load(out).dataobj)
    assert main(["apply", "-i", moving, "-r", fixed, "-t", prefix + "_warp.nii.gz", "-t", prefix + "_affine.txt",
                 "-o", str(tmp_path / "applied.nii.gz")]) == 0
    applied = np.asarray(nib.load(tmp_path / "applied.nii.gz").dataobj)
    np.testing.assert_allclose(applied, warped, rtol=0, atol=2e-5 * np.abs(warped).max())
    # the inverse affine file is the inverse of the affine
    np.testing.assert_allclose(load_matrix(prefix + "_inverse_affine.txt") @ load_matrix(prefix + "_affine.txt"),
                               np.eye(4), atol=1e-9)
    # the inverse chain: x -> phi^-1(W^-1(y)); composed with the forward one, the identity
    fwd = [load_transform(prefix + "_warp.nii.gz"), load_transform(prefix + "_affine.txt")]
    inv = [load_transform(f"[{prefix}_affine.txt,1]"), load_transform(prefix + "_inverse_warp.nii.gz")]
    pts = grid_points(FIXED_SHAPE, FIXED_A)
    round_trip = transform_points(inv, transform_points(fwd, pts, grid=(FIXED_SHAPE, FIXED_A)))
    err = (round_trip - pts).norm(dim=0) / 1.25  # mm -> voxels (the smallest spacing)
    # over the points whose phi(x) lies in the field's grid, a voxel from its edge (beyond it the
    # inverse field is not defined)
    mid = transform_points(fwd[:1], pts, grid=(FIXED_SHAPE, FIXED_A))
    Ai = torch.as_tensor(np.linalg.inv(FIXED_A))
    idx = torch.einsum("ij,j...->i...", Ai[:3, :3], mid) + Ai[:3, 3].view(3, 1, 1, 1)
    keep = ((idx >= 1) & (idx <= torch.tensor(FIXED_SHAPE).view(3, 1, 1, 1) - 2)).all(dim=0)
    err = err[keep]
    assert float(err.mean()) < 0.05 and float(err.max()) < 0.5, (float(err.mean()), float(err.max()))
    import json

    info = json.load(open(tmp_path / "m.json"))["inverse"]
    assert info["method"] == "velocity" and info["residual_mean"] < 0.05


# ------------------------------------------------------------------------- inverses


def test_inverse_of_a_velocity_is_inverse():
    # displacements up to 2 voxels over a 20-voxel grid; the goal (mean <= 0.05, max <=
    # 0.5 voxel) holds everywhere for the mean and inside for the max (at the grid's edge the
    # integration's zero padding and the field's clamping differ from the continuous flow)
    v = _smooth_disp((20, 22, 18), seed=7, scale=1.0)
    from fastwarp.integrate import integrate_velocity

    u, w = integrate_velocity(v, 7), inverse_of_velocity(v, 7)
    assert float(u.abs().max()) > 2.0
    inside = torch.zeros(20, 22, 18, dtype=torch.bool)
    inside[4:-4, 4:-4, 4:-4] = True
    for a, b in ((u, w), (w, u)):
        assert inverse_consistency(a, b)["mean"] < 0.05
        ic = inverse_consistency(a, b, inside)
        assert ic["mean"] < 0.05 and ic["max"] < 0.5, ic


def test_fixed_point_inversion_converges_where_the_map_does_not_fold():
    u = _smooth_disp((20, 22, 18), seed=8, scale=1.0)
    w, info = invert_displacement(u)
    assert info["residual_mean"] < 0.01 and info["change"] < 1e-3, info
    ic = inverse_consistency(u, w)
    assert ic["mean"] < 0.1, ic
    # and the residual is reported, not hidden, where it cannot converge
    _, few = invert_displacement(u, iterations=1)
    assert few["iterations"] == 1 and few["residual_mean"] > info["residual_mean"]
    # where the map folds, the best iterate is kept and its residual reported
    folded = _smooth_disp((20, 22, 18), seed=7, scale=2.0)
    _, bad = invert_displacement(folded, iterations=30)
    assert bad["change"] > 1e-3 and 0 < bad["residual_mean"] < 0.1 and bad["residual_max"] > 0.5, bad


# ------------------------------------------------------------------------- bad inputs


def _setup_files(tmp_path):
    fixed = _nifti(tmp_path / "f.nii.gz", _brainish(FIXED_SHAPE, FIXED_A, 0), FIXED_A)
    moving = _nifti(tmp_path / "m.nii.gz", _brainish(MOVING_SHAPE, MOVING_A, 1), MOVING_A)
    save_matrix(tmp_path / "a.txt", _world_affine())
    save_displacement_field(tmp_path / "w.nii.gz", _smooth_disp(FIXED_SHAPE), FIXED_A)
    return fixed, moving


@pytest.mark.parametrize("case, message", [
    ("2d-transform", "2-D"),
    ("far-field", "does not overlap"),
    ("missing", "no such transform file"),
    ("corrupt", "not a transform file|not a readable NIfTI|not a matrix"),
    ("4d-image", "4-D|single 2-D or 3-D"),
    ("invert-field", "cannot be inverted"),
    ("outputs", "one output per input"),
])
def test_apply_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, capsys, case, message):
    fixed, moving = _setup_files(tmp_path)
    ts, inputs = [str(tmp_path / "w.nii.gz"), str(tmp_path / "a.txt")], [moving]
    if case == "2d-transform":
        save_matrix(tmp_path / "a2.txt", np.eye(3))
        ts = [str(tmp_path / "a2.txt")]
    elif case == "far-field":
        far = FIXED_A.copy()
        far[0, 3] += 500.0
        save_displacement_field(tmp_path / "far.nii.gz", _smooth_disp(FIXED_SHAPE), far)
        ts = [str(tmp_path / "far.nii.gz")]
    elif case == "missing":
        ts = [str(tmp_path / "nothing.txt")]
    elif case == "corrupt":
        (tmp_path / "bad.mat").write_bytes(b"\x00\x01\x02\xff" * 10)
        ts = [str(tmp_path / "bad.mat")]
    elif case == "4d-image":
        inputs = [_nifti(tmp_path / "series.nii.gz", np.zeros((*MOVING_SHAPE, 2), np.float32), MOVING_A)]
    elif case == "invert-field":
        ts = [f"[{tmp_path / 'w.nii.gz'},1]"]
    outs = [str(tmp_path / "o.nii.gz")] + ([str(tmp_path / "o2.nii.gz")] if case == "outputs" else [])
    argv = ["apply", "-r", fixed] + sum([["-i", i] for i in inputs], []) + sum([["-t", t] for t in ts], []) + \
        sum([["-o", o] for o in outs], [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    assert not any(os.path.exists(o) for o in outs)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".fastwarp")]


def test_apply_several_inputs_and_a_label_map(tmp_path):
    import nibabel as nib

    fixed, moving = _setup_files(tmp_path)
    labels = np.zeros(MOVING_SHAPE, np.uint8)
    labels[5:18, 4:16, 3:14] = 2
    lab = _nifti(tmp_path / "l.nii.gz", labels, MOVING_A)
    outs = [str(tmp_path / "o1.nii.gz"), str(tmp_path / "o2.nii.gz")]
    assert main(["apply", "-i", moving, "-i", lab, "-r", fixed, "-t", str(tmp_path / "w.nii.gz"), "-t",
                 str(tmp_path / "a.txt"), "-o", outs[0], "-o", outs[1], "-n", "nearest"]) == 0
    o2 = nib.load(outs[1])
    assert o2.get_data_dtype() == np.uint8 and o2.shape == FIXED_SHAPE
    assert set(np.unique(np.asarray(o2.dataobj))) <= {0, 2}
    np.testing.assert_allclose(nib.load(outs[0]).affine, FIXED_A, atol=1e-5)


# ------------------------------------------------------------------------- with ANTs


@needs_ants
def test_ants_reads_fastwarps_field_and_affine(tmp_path):
    import ants

    fixed, moving = _setup_files(tmp_path)
    ts = [str(tmp_path / "w.nii.gz"), str(tmp_path / "a.txt")]
    ref = apply_transforms(np.asarray(__import__("nibabel").load(moving).dataobj), MOVING_A, FIXED_SHAPE, FIXED_A, ts)
    out = ants.apply_transforms(ants.image_read(fixed), ants.image_read(moving), transformlist=ts,
                                interpolator="linear").numpy()
    # over the points whose source lies inside the moving image (ANTs and fastwarp differ at the edge)
    coords = _source_index(ts)
    inside = np.all((coords >= 0) & (coords <= np.array(MOVING_SHAPE).reshape(3, 1, 1, 1) - 1), axis=0)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(out[inside], ref.numpy()[inside], rtol=0, atol=1e-3)


def _source_index(ts):
    pts = transform_points([load_transform(t) for t in ts], grid_points(FIXED_SHAPE, FIXED_A),
                           grid=(FIXED_SHAPE, FIXED_A)).numpy()
    Ai = np.linalg.inv(MOVING_A)
    return np.einsum("ij,j...->i...", Ai[:3, :3], pts) + Ai[:3, 3].reshape(3, 1, 1, 1)


@needs_ants
def test_fastwarp_applies_ants_syn_outputs(tmp_path):
    import ants
    import nibabel as nib

    fixed, moving = _setup_files(tmp_path)
    reg = ants.registration(ants.image_read(fixed), ants.image_read(moving), type_of_transform="SyN",
                            reg_iterations=(10, 5), outprefix=str(tmp_path / "ants_"))
    ts = reg["fwdtransforms"]
    assert any(t.endswith("Warp.nii.gz") for t in ts) and any(t.endswith(".mat") for t in ts)
    ours = apply_transforms(np.asarray(nib.load(moving).dataobj), MOVING_A, FIXED_SHAPE, FIXED_A, ts).numpy()
    theirs = ants.apply_transforms(ants.image_read(fixed), ants.image_read(moving), transformlist=ts).numpy()
    coords = _source_index(ts)
    inside = np.all((coords >= 0) & (coords <= np.array(MOVING_SHAPE).reshape(3, 1, 1, 1) - 1), axis=0)
    assert inside.mean() > 0.3
    np.testing.assert_allclose(ours[inside], theirs[inside], rtol=0, atol=1e-3)
    # and the inverse transforms, the fixed image onto the moving grid
    inv = reg["invtransforms"]
    ours_inv = apply_transforms(np.asarray(nib.load(fixed).dataobj), FIXED_A, MOVING_SHAPE, MOVING_A,
                                [(inv[0], True), inv[1]]).numpy()
    theirs_inv = ants.apply_transforms(ants.image_read(moving), ants.image_read(fixed), transformlist=inv,
                                       whichtoinvert=[True, False]).numpy()
    assert np.mean(np.abs(ours_inv - theirs_inv) < 1e-3) > 0.95


def test_apply_in_2d_against_the_analytic_image(tmp_path):
    """2-D: a 4x4 NIfTI affine of a slice, an affine and a field of the 2-D layout."""
    A4 = np.diag([1.5, -1.25, 1.0, 1.0])
    A4[:2, 3] = [-12.0, 14.0]
    shape = (21, 19)
    pts = grid_points(shape, A4[np.ix_([0, 1, 3], [0, 1, 3])]).numpy()

    def f(p):
        return np.sin(p[0] / 5.0) * np.cos(p[1] / 6.0)

    W = np.eye(3)
    W[:2, :2] += [[0.05, -0.03], [0.02, 0.04]]
    W[:2, 2] = [0.7, -0.4]
    save_matrix(tmp_path / "a2.txt", W)
    u = 0.8 * torch.nn.functional.interpolate(torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(3)),
                                              size=shape, mode="bilinear", align_corners=True)
    save_displacement_field(tmp_path / "w2.nii.gz", u, A4)
    out = apply_transforms(f(pts).astype(np.float32), A4, shape, A4, [tmp_path / "w2.nii.gz", tmp_path / "a2.txt"])
    d = np.einsum("ij,j...->i...", A4[:2, :2], u[0].double().numpy())
    y = np.einsum("ij,j...->i...", W[:2, :2], pts + d) + W[:2, 2].reshape(2, 1, 1)
    Ai = np.linalg.inv(A4[np.ix_([0, 1, 3], [0, 1, 3])])
    idx = np.einsum("ij,j...->i...", Ai[:2, :2], y) + Ai[:2, 2].reshape(2, 1, 1)
    inside = np.all((idx > 0.5) & (idx < np.array(shape).reshape(2, 1, 1) - 1.5), axis=0)
    assert inside.mean() > 0.5
    assert np.abs(out.numpy() - f(y))[inside].max() < 0.02
    with pytest.raises(ValueError, match="2-D transform, but the images are 3-D"):
        apply_transforms(np.zeros((4, 5, 6), np.float32), np.eye(4), (4, 5, 6), np.eye(4), [tmp_path / "a2.txt"])
