"""The exceptions of fastwarp's op layer.

fastwarp raises ``ValueError`` for a bad shape or option and ``TypeError`` for a bad dtype,
with a message that names the argument. Where an op mirrors a torch op (``grid_sample``;
``warp`` is ``grid_sample`` in voxel units), torch raises ``RuntimeError`` (or
``NotImplementedError``, itself a ``RuntimeError``) for the same mistakes, and code written
against torch, MONAI's included, catches that. So each exception here is both: code that
catches either keeps working.
"""


class ArgumentError(ValueError, RuntimeError):
    """A bad shape, size, device or option: a ``ValueError`` and a ``RuntimeError``."""


class ArgumentTypeError(TypeError, RuntimeError):
    """A bad type or dtype: a ``TypeError`` and a ``RuntimeError``."""


class UnsupportedDtypeError(TypeError, NotImplementedError):
    """A dtype the op has no kernel for (complex, or an integer image with linear
    interpolation): a ``TypeError`` and a ``NotImplementedError`` (torch's type for it)."""
