"""The registration network, VoxelMorph's ``VxmDense``: the public path of
:mod:`fastwarp.app.models`."""

from .app.models import RegUNet, default_features

__all__ = ["RegUNet", "default_features"]
