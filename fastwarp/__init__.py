"""fastwarp: fast warp and similarity kernels for deep-learning image registration.

The op layer (``warp``, ``grid_sample``, ``ncc``, ``mi``, ``integrate``, ``nn``, ``losses``) needs only torch.
"""

import torch  # noqa: F401  (torch's own operators must be loaded before ours)

try:
    from . import _C  # noqa: F401  (loading the library registers the fastwarp:: operators)
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        f"fastwarp's compiled extension (fastwarp._C) could not be loaded: {e}\n"
        "It is compiled by `pip install --no-build-isolation .` against the torch that is "
        "installed at that moment; after installing or upgrading torch, reinstall fastwarp "
        "the same way (see README.md)."
    ) from e

from . import _ops  # noqa: F401,E402  (fake kernels and autograd for the operators)
from . import losses, nn  # noqa: E402
from ._ops import has_cuda_kernels  # noqa: E402
from .integrate import integrate_velocity  # noqa: E402
from .mi import mi  # noqa: E402
from .ncc import ncc  # noqa: E402
from .warp import grid_sample, warp  # noqa: E402

__version__ = "0.1.0"

__all__ = ["warp", "grid_sample", "ncc", "mi", "integrate_velocity", "nn", "losses", "has_cuda_kernels", "__version__"]
