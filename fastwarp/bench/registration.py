"""``python -m fastwarp.bench.registration``: fastwarp's registration (network, refinement,
diffeomorphic or not) against ANTs SyN and SimpleITK's demons on the embedded pair; see
:mod:`fastwarp.app.bench.registration`."""

import sys

from ..app.bench.registration import main

if __name__ == "__main__":
    sys.exit(main())
