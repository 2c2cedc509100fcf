"""fastwarp.app.models.RegUNet (VoxelMorph's VxmDense): shapes, input checks, the identity at
initialisation, the diffeomorphic mode, VoxelMorph's published architecture, autocast and
gradients."""

import pytest
import torch
from torch import nn

import fastwarp
from fastwarp.app.models import RegUNet, default_features

TINY = dict(enc_features=(4, 8), dec_features=(8, 8, 4))


# tiny convolutions: one thread is faster than two fighting over a busy machine, and runs
# compared bit for bit need the same thread count anyway
pytestmark = pytest.mark.usefixtures("one_thread")


def pair(shape, gen):
    moving = torch.rand(shape, generator=gen)
    fixed = 0.5 * torch.rand(shape, generator=gen) + 0.25
    return moving, fixed


def zero_flow_head(model, bias=None):
    with torch.no_grad():
        model.flow.weight.zero_()
        if bias is None:
            model.flow.bias.zero_()
        else:
            model.flow.bias.copy_(torch.as_tensor(bias, dtype=model.flow.bias.dtype))
    return model


# ------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("ndim, shape", [(2, (2, 1, 32, 48)), (3, (1, 1, 16, 32, 16))])
def test_output_shapes_default_features(ndim, shape, gen):
    model = RegUNet(ndim)
    assert model.multiple == 16
    moving, fixed = pair(shape, gen)
    with torch.no_grad():
        warped, disp = model(moving, fixed)
    assert warped.shape == moving.shape
    assert disp.shape == (shape[0], ndim, *shape[2:])
    assert warped.dtype == disp.dtype == torch.float32


@pytest.mark.parametrize(
    "ndim, shape, kwargs, multiple",
    [
        (2, (3, 1, 12, 20), TINY, 4),
        (3, (2, 1, 12, 8, 20), TINY, 4),
        (3, (1, 1, 8, 16, 24), dict(enc_features=(4, 8, 8), dec_features=(8, 8, 8, 4, 4)), 8),
        (2, (2, 2, 8, 12), dict(TINY, in_channels=2), 4),
    ],
)
def test_output_shapes_custom_features(ndim, shape, kwargs, multiple, gen):
    model = RegUNet(ndim, **kwargs)
    assert model.multiple == multiple
    moving, fixed = pair(shape, gen)
    with torch.no_grad():
        warped, disp = model(moving, fixed)
    assert warped.shape == moving.shape
    assert disp.shape == (shape[0], ndim, *shape[2:])
    assert model.unet.out_channels == kwargs["dec_features"][-1]


@pytest.mark.parametrize("ndim, shape", [(2, (1, 1, 16, 24)), (3, (2, 1, 8, 12, 16))])
def test_diffeomorphic_output_shapes(ndim, shape, gen):
    model = RegUNet(ndim, **TINY, diffeomorphic=True)
    assert model.diffeomorphic and model.int_downsize == 2 and model.integrate.nsteps == 7
    moving, fixed = pair(shape, gen)
    with torch.no_grad():
        warped, disp = model(moving, fixed)
    assert warped.shape == moving.shape
    assert disp.shape == (shape[0], ndim, *shape[2:])
    # int_steps=0 switches integration off
    assert not RegUNet(ndim, **TINY, diffeomorphic=True, int_steps=0).diffeomorphic


def test_multiple_includes_int_downsize():
    assert RegUNet(2, **TINY, diffeomorphic=True, int_downsize=3).multiple == 12
    assert RegUNet(2, **TINY, diffeomorphic=True, int_downsize=8).multiple == 8
    # int_downsize only matters when integrating
    assert RegUNet(2, **TINY, diffeomorphic=False, int_downsize=3).multiple == 4


# ------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("ndim, shape", [(2, (1, 1, 16, 18)), (3, (1, 1, 12, 16, 10)), (2, (1, 1, 15, 16))])
def test_spatial_size_not_a_multiple(ndim, shape, gen):
    model = RegUNet(ndim, **TINY)
    moving, fixed = pair(shape, gen)
    with pytest.raises(ValueError, match=r"multiple of 4") as info:
        model(moving, fixed)
    assert str(tuple(shape[2:])) in str(info.value)


def test_wrong_rank(gen):
    model3 = RegUNet(3, **TINY)
    moving, fixed = pair((1, 1, 16, 16), gen)
    with pytest.raises(ValueError, match=r"3-D model.*\(1, 1, 16, 16\)"):
        model3(moving, fixed)
    model2 = RegUNet(2, **TINY)
    moving, fixed = pair((1, 1, 8, 8, 8), gen)
    with pytest.raises(ValueError, match=r"2-D model"):
        model2(moving, fixed)
    with pytest.raises(ValueError, match=r"2-D model"):
        model2(moving[0, 0], fixed[0, 0])


def test_mismatched_shapes(gen):
    model = RegUNet(2, **TINY)
    moving = torch.rand(1, 1, 16, 16, generator=gen)
    fixed = torch.rand(1, 1, 16, 20, generator=gen)
    with pytest.raises(ValueError, match=r"same shape"):
        model(moving, fixed)
    with pytest.raises(ValueError, match=r"same shape"):
        model(moving, torch.rand(2, 1, 16, 16, generator=gen))


def test_wrong_channel_count(gen):
    model = RegUNet(3, **TINY)
    moving, fixed = pair((1, 2, 8, 8, 8), gen)
    with pytest.raises(ValueError, match=r"1 channel\(s\), got 2"):
        model(moving, fixed)
    model2 = RegUNet(2, **TINY, in_channels=2)
    moving, fixed = pair((1, 1, 8, 8), gen)
    with pytest.raises(ValueError, match=r"2 channel\(s\), got 1"):
        model2(moving, fixed)


def test_not_a_tensor(gen):
    model = RegUNet(2, **TINY)
    with pytest.raises(TypeError, match="moving"):
        model([[0.5]], torch.rand(1, 1, 8, 8, generator=gen))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="ndim"):
        RegUNet(1)
    with pytest.raises(ValueError, match="dec_features"):
        RegUNet(2, enc_features=(4, 8, 8), dec_features=(8, 8))
    with pytest.raises(ValueError, match="int_steps"):
        RegUNet(2, **TINY, diffeomorphic=True, int_steps=-1)
    with pytest.raises(ValueError, match="int_downsize"):
        RegUNet(2, **TINY, diffeomorphic=True, int_downsize=0)


# ------------------------------------------------------------------------- identity


@pytest.mark.parametrize("ndim, shape", [(2, (2, 1, 32, 16)), (3, (1, 1, 16, 16, 16))])
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_fresh_model_is_near_identity(ndim, shape, diffeomorphic, gen):
    torch.manual_seed(0)
    model = RegUNet(ndim, **TINY, diffeomorphic=diffeomorphic)
    moving, fixed = pair(shape, gen)
    with torch.no_grad():
        warped, disp = model(moving, fixed)
    assert 0 < disp.abs().max() < 1e-3
    torch.testing.assert_close(warped, moving, rtol=0, atol=2e-3)


@pytest.mark.parametrize("ndim, shape", [(2, (2, 1, 12, 20)), (3, (1, 1, 8, 12, 16))])
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_zero_flow_head_is_exact_identity(ndim, shape, diffeomorphic, gen):
    model = zero_flow_head(RegUNet(ndim, **TINY, diffeomorphic=diffeomorphic))
    moving, fixed = pair(shape, gen)
    with torch.no_grad():
        warped, disp = model(moving, fixed)
    assert torch.equal(disp, torch.zeros_like(disp))
    assert torch.equal(warped, moving)


def test_displacement_convention(gen):
    """warped(p) = moving(p + disp(p)): a flow head that outputs the constant (1, 0, 0) shifts
    the image by one voxel along the first spatial axis, zeros coming in at the far end."""
    model = zero_flow_head(RegUNet(3, **TINY), bias=[1.0, 0.0, 0.0])
    moving, fixed = pair((1, 1, 8, 12, 16), gen)
    with torch.no_grad():
        warped, disp = model(moving, fixed)
    assert torch.equal(disp[:, 0], torch.ones_like(disp[:, 0]))
    torch.testing.assert_close(warped[:, :, :-1], moving[:, :, 1:], rtol=0, atol=1e-6)
    assert torch.equal(warped[:, :, -1], torch.zeros_like(warped[:, :, -1]))


def test_diffeomorphic_constant_velocity_is_a_translation(gen):
    """exp of a constant velocity field is the translation by it (away from the borders, where
    zero padding cuts the field off), through the half-resolution integration and resize."""
    v = [0.3, -0.2, 0.25]
    model = zero_flow_head(RegUNet(3, **TINY, diffeomorphic=True), bias=v)
    moving, fixed = pair((1, 1, 16, 16, 16), gen)
    with torch.no_grad():
        _, disp = model(moving, fixed)
    centre = disp[0, :, 6:10, 6:10, 6:10]
    expected = torch.tensor(v).view(3, 1, 1, 1).expand_as(centre)
    torch.testing.assert_close(centre, expected, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------- architecture


def _vxm_unet_convs(infeats, enc, dec):
    """(in, out) of every convolution of VoxelMorph's classic ``Unet`` (one conv per level),
    written out from its constructor: encoder_nfs = [infeats, *enc] flipped; decoder level
    ``l`` convolves ``prev -> dec[l]`` and then adds encoder_nfs[l] channels by the skip
    concatenation; the remaining decoder features convolve at full resolution."""
    convs, prev, encoder_nfs = [], infeats, [infeats]
    for nf in enc:
        convs.append((prev, nf))
        prev = nf
        encoder_nfs.append(nf)
    encoder_nfs = encoder_nfs[::-1]
    for level, nf in enumerate(dec[: len(enc)]):
        convs.append((prev, nf))
        prev = nf + encoder_nfs[level]
    for nf in dec[len(enc):]:
        convs.append((prev, nf))
        prev = nf
    return convs, prev


def test_default_features_are_voxelmorphs():
    assert default_features() == ((16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16))
    model = RegUNet(3)
    assert model.config["enc_features"] == [16, 32, 32, 32]
    assert model.config["dec_features"] == [32, 32, 32, 32, 32, 16, 16]
    assert model.config["int_steps"] == 7 and model.config["int_downsize"] == 2


def test_conv_layout_matches_voxelmorph_unet():
    convs, final = _vxm_unet_convs(2, (16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16))
    # written out by hand, VoxelMorph's Unet for the defaults
    assert convs == [(2, 16), (16, 32), (32, 32), (32, 32),  # encoder
                     (32, 32), (64, 32), (64, 32), (64, 32),  # decoder (+ skips)
                     (48, 32), (32, 16), (16, 16)]  # full resolution
    assert final == 16
    for ndim in (2, 3):
        model = RegUNet(ndim)
        blocks = [*model.unet.encoder, *model.unet.decoder, *model.unet.remaining]
        got = [(b[0].in_channels, b[0].out_channels) for b in blocks]
        assert got == convs
        conv_type = nn.Conv3d if ndim == 3 else nn.Conv2d
        for b in blocks:
            assert isinstance(b[0], conv_type)
            assert b[0].kernel_size == (3,) * ndim and b[0].stride == (1,) * ndim and b[0].padding == (1,) * ndim
            assert isinstance(b[1], nn.LeakyReLU) and b[1].negative_slope == 0.2
        assert isinstance(model.flow, conv_type)
        assert (model.flow.in_channels, model.flow.out_channels) == (16, ndim)
        assert model.flow.kernel_size == (3,) * ndim and model.flow.padding == (1,) * ndim


def _conv_params(convs, k):
    return sum(k * cin * cout + cout for cin, cout in convs)


@pytest.mark.parametrize("ndim, expected", [(2, 109_170), (3, 327_331)])
def test_parameter_count_matches_vxmdense(ndim, expected):
    convs, final = _vxm_unet_convs(2, (16, 32, 32, 32), (32, 32, 32, 32, 32, 16, 16))
    k = 3**ndim
    by_hand = _conv_params(convs, k) + _conv_params([(final, ndim)], k)  # + the flow head
    assert by_hand == expected
    model = RegUNet(ndim)
    assert sum(p.numel() for p in model.parameters()) == expected
    # the diffeomorphic mode adds no parameters (VecInt, resize and warp have none)
    assert sum(p.numel() for p in RegUNet(ndim, diffeomorphic=True).parameters()) == expected
    assert len(list(RegUNet(ndim).buffers())) == 0


@pytest.mark.parametrize("enc, dec", [((4, 8), (8, 8, 4)), ((8, 16, 16), (16, 16, 16, 8)), ((4, 8, 8), (8, 8, 8))])
def test_parameter_count_custom_features(enc, dec):
    convs, final = _vxm_unet_convs(2, enc, dec)
    model = RegUNet(3, enc, dec)
    expected = _conv_params(convs, 27) + _conv_params([(final, 3)], 27)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_flow_head_initialisation():
    torch.manual_seed(0)
    model = RegUNet(3)
    w = model.flow.weight.detach()
    assert torch.equal(model.flow.bias, torch.zeros_like(model.flow.bias))
    # N(0, 1e-5): 1296 samples pin the standard deviation to a few percent
    assert 0.9e-5 < float(w.std()) < 1.1e-5
    assert abs(float(w.mean())) < 1e-6
    # the other convolutions keep PyTorch's default (much larger) initialisation
    assert float(model.unet.encoder[0][0].weight.detach().std()) > 1e-2


# ------------------------------------------------------------------------- autocast, gradients


@pytest.mark.parametrize("ndim, shape", [(2, (2, 1, 16, 24)), (3, (1, 1, 8, 16, 12))])
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_autocast_bf16(ndim, shape, diffeomorphic, gen):
    torch.manual_seed(0)
    model = RegUNet(ndim, **TINY, diffeomorphic=diffeomorphic)
    with torch.no_grad():  # a visible, non-trivial field
        model.flow.weight.normal_(0, 2.0, generator=gen)
    moving, fixed = pair(shape, gen)
    with torch.no_grad():
        ref_warped, ref_disp = model(moving, fixed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            warped, disp = model(moving, fixed)
    assert warped.dtype == torch.float32 and disp.dtype == torch.float32
    assert warped.shape == moving.shape and disp.shape == ref_disp.shape
    assert ref_disp.abs().max() > 0.5
    # bf16 convolutions: ~3 significant digits
    assert (disp - ref_disp).abs().max() < 0.05 * ref_disp.abs().max()
    assert (warped - ref_warped).abs().mean() < 0.05 * (ref_warped - moving).abs().mean() + 1e-3


def test_autocast_bf16_backward(gen):
    model = RegUNet(2, **TINY)
    moving, fixed = pair((2, 1, 16, 16), gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        warped, disp = model(moving, fixed)
    loss = fastwarp.losses.NCC(5)(warped, fixed) + fastwarp.losses.Grad("l2")(disp)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("ndim, shape", [(2, (2, 1, 16, 20)), (3, (1, 1, 8, 12, 16))])
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_gradients_reach_every_parameter(ndim, shape, diffeomorphic, gen):
    torch.manual_seed(0)
    model = RegUNet(ndim, **TINY, diffeomorphic=diffeomorphic)
    moving, fixed = pair(shape, gen)
    warped, disp = model(moving, fixed)
    loss = fastwarp.losses.NCC(5)(warped, fixed) + fastwarp.losses.Grad("l2")(disp)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert model.flow.weight.grad.abs().max() > 1e-6
    assert model.flow.bias.grad.abs().max() > 1e-6
