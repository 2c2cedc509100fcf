"""The configuration of ``fastwarp train`` and ``fastwarp register``, typed: one field per
command-line option, under the option's name, with its default. The command line
(:mod:`fastwarp.app.cli`) only parses into these; :func:`~fastwarp.app.training.train` and
:func:`~fastwarp.app.register.register_files` take them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .data.nifti import NIFTI_SUFFIXES, nifti_stem
from .similarity import SIMILARITIES

__all__ = ["TrainConfig", "RegisterConfig", "FIGURE_SUFFIXES"]

# The figure formats matplotlib writes (by the file's suffix).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".eps", ".ps")


@dataclass(frozen=True)
class TrainConfig:
    """What ``fastwarp train`` does; the fields are its options (``fastwarp train -h``)."""

    # data
    data: str | None = None  # a folder of NIfTI volumes or a list file; None: the embedded brains
    val: str | None = None  # held-out subjects; None: the embedded pair, or the last subject of data
    atlas: str | None = None  # a NIfTI atlas: atlas-to-subject pairs
    pairing: str | None = None  # "subject", "atlas" or "self"; None: from the data (see training)
    ndim: int = 3  # 3 for volumes, 2 for axial slices
    downsample: int = 1  # train at 1/N resolution
    augment: bool = True  # random smooth deformations and intensity changes of the pairs
    max_disp: float = 4.0  # their scale, in voxels
    workers: int | None = None  # DataLoader workers; None: 8 with CUDA (at most the CPUs less one), 1 on the CPU
    # model
    enc: list[int] | None = None  # encoder features; None: VoxelMorph's
    dec: list[int] | None = None  # decoder features; None: VoxelMorph's
    diffeomorphic: bool = False
    int_steps: int = 7
    int_downsize: int = 2
    # training
    epochs: int = 20
    steps: int = 50  # optimizer steps per epoch
    batch_size: int = 1  # the global batch, split over the processes
    lr: float = 1e-4
    similarity: str = "ncc"  # "ncc", "mse" or "mi"
    window: int = 9  # NCC window
    lam: float | None = None  # smoothness weight; None: 1 for ncc and mi, 0.01 for mse (VoxelMorph's)
    seed: int = 0
    device: str = "auto"  # auto (cuda when present), cpu, cuda, cuda:N
    bf16: bool = False  # bf16 autocast for the network (the warp and the loss stay float32)
    output: str = "fastwarp-run"
    resume: str | None = None  # a checkpoint to continue from
    figure: bool = True  # figure.png of the validation pair at the end
    quiet: bool = False  # no progress bar

    def __post_init__(self):
        for option, value, choices in (("pairing", self.pairing, (None, "subject", "atlas", "self")),
                                       ("ndim", self.ndim, (2, 3)), ("similarity", self.similarity, SIMILARITIES)):
            if value not in choices:
                raise ValueError(f"--{option} must be one of {[c for c in choices if c is not None]}, got {value!r}")
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"--window must be a positive odd integer, got {self.window}")
        if self.downsample < 1:
            raise ValueError(f"--downsample must be >= 1, got {self.downsample}")

    @property
    def smoothness_weight(self) -> float:
        """``lam``, or VoxelMorph's default for the similarity."""
        if self.lam is not None:
            return self.lam
        return 0.01 if self.similarity == "mse" else 1.0


@dataclass(frozen=True)
class RegisterConfig:
    """What ``fastwarp register`` does; the fields are its options (``fastwarp register -h``).
    Every output path is checked here, before anything is read or written.

    At least one of ``model`` (the network's prediction), ``affine`` and ``refine`` (the
    instance optimization, from the prediction or from the identity) says what to do."""

    moving: str
    fixed: str  # any voxel grid: the NIfTI affines say how the two lie in the world
    model: str | None = None  # a checkpoint written by fastwarp train
    output: str = ""  # the warped moving image (required)
    flow: str | None = None  # the deformable part (X, Y, Z, 3) in voxels of the fixed grid
    labels: str | None = None  # the moving image's label map: warped (nearest), and Dice
    fixed_labels: str | None = None  # the fixed image's label map, for Dice
    labels_output: str | None = None  # the warped label map; None: <output stem>_labels.nii.gz
    figure: str | None = None
    json: str | None = None  # the metrics
    affine: bool = False  # estimate a 12-parameter affine first
    matrix: str | None = None  # where the affine goes; None: <output stem>_affine.txt with --affine
    refine: int | None = None  # refine for this pair: None no, 0 the default schedule, N steps per level
    diffeomorphic: bool = False  # refine a stationary velocity field (an invertible map; see --help)
    smooth: float | None = None  # the refinement's smoothness weight; None: the measured default
    bending: float | None = None  # the refinement's bending weight (second differences); None: none
    similarity: str = "ncc"  # of the affine and the refinement: "ncc", "mse" or "mi"
    transform: str | None = None  # the ITK/ANTs transform files' prefix; None: the output's stem
    inverse: bool = False  # also write the inverse transform
    device: str = "auto"
    quiet: bool = False  # no progress bar

    def __post_init__(self):
        if not self.output:
            raise ValueError("--output is required")
        if self.model is None and not self.affine and self.refine is None:
            raise ValueError("nothing to do: give --model, --refine or --affine")
        if self.refine is not None and self.refine < 0:
            raise ValueError(f"--refine takes a number of steps per level >= 0, got {self.refine}")
        if self.diffeomorphic and self.refine is None:
            raise ValueError("--diffeomorphic applies to --refine: give both")
        for option, weight in (("smooth", self.smooth), ("bending", self.bending)):
            if weight is not None and (self.refine is None or not (math.isfinite(weight) and weight >= 0)):
                raise ValueError(f"--{option} takes a finite weight >= 0 for --refine, got {weight}"
                                 + ("" if self.refine is not None else " without --refine"))
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"--similarity must be one of {list(SIMILARITIES)}, got {self.similarity!r}")
        for option, path in (("output", self.output), ("flow", self.flow), ("labels-output", self.warped_labels)):
            if path and not path.endswith(NIFTI_SUFFIXES):
                raise ValueError(f"--{option}: {path} must end in .nii or .nii.gz")
        if self.figure and not self.figure.lower().endswith(FIGURE_SUFFIXES):
            raise ValueError(f"--figure: {self.figure} must end in one of {', '.join(FIGURE_SUFFIXES)} "
                             "(the format is the suffix's)")

    @property
    def outputs(self) -> dict[str, str]:
        """Every file this registration will write, by option."""
        paths = {"output": self.output, "flow": self.flow, "labels-output": self.warped_labels,
                 "matrix": self.matrix_output, "transform": self.warp_output,
                 "transform (inverse)": self.inverse_warp_output,
                 "transform (inverse affine)": self.inverse_matrix_output, "figure": self.figure, "json": self.json}
        return {option: path for option, path in paths.items() if path}

    @property
    def warped_labels(self) -> str | None:
        """Where the warped label map goes (None without ``labels``)."""
        if not self.labels:
            return None
        if self.labels_output:
            return self.labels_output
        stem = nifti_stem(self.output)
        return stem + "_labels" + self.output[len(stem):]

    @property
    def matrix_output(self) -> str | None:
        """Where the affine matrix goes (None without ``affine``)."""
        if not self.affine:
            return None
        return self.matrix or self.transform_prefix + "_affine.txt"

    @property
    def transform_prefix(self) -> str:
        """The ITK/ANTs transform files' prefix: ``--transform``, else the output's stem."""
        return self.transform or nifti_stem(self.output)

    @property
    def warp_output(self) -> str | None:
        """The deformable part as an ITK displacement field (None without one)."""
        if self.model is None and self.refine is None:
            return None
        return self.transform_prefix + "_warp.nii.gz"

    @property
    def inverse_warp_output(self) -> str | None:
        if not self.inverse or self.warp_output is None:
            return None
        return self.transform_prefix + "_inverse_warp.nii.gz"

    @property
    def inverse_matrix_output(self) -> str | None:
        if not self.inverse or not self.affine:
            return None
        return self.transform_prefix + "_inverse_affine.txt"
