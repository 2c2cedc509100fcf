"""A cohort in one command (issue 23): ``fastwarp register --list pairs.txt -o DIR`` or
``fastwarp register --moving-dir DIR --fixed ATLAS -o DIR``, every option of ``fastwarp
register`` applying to every subject.

- The list file: one subject per line, ``moving [fixed] [labels]`` (:data:`LIST_FORMAT`), paths
  relative to the list file, blank lines and ``#`` comments skipped. ``fixed`` may be left out,
  or given as ``-``, where ``--fixed`` names the one fixed image (an atlas); ``labels`` is the
  moving image's label map (warped, and Dice with ``--fixed-labels``). A folder
  (``--moving-dir``): every NIfTI image in it, a ``*_seg`` / ``*_labels`` / ``*_label`` /
  ``*_aseg`` file being its image's label map (:func:`~fastwarp.app.data.subjects.find_volumes`).
- Every line is checked before any work (its fields, that its files exist, that no two subjects
  share a name); the errors come together, each with its line number.
- One output set per subject in ``DIR``, named by the moving image's stem ``NAME``:
  ``NAME.nii.gz`` (the warped image), ``NAME_warp.nii.gz`` / ``NAME_affine.txt`` (the transform,
  ITK/ANTs files), ``NAME_labels.nii.gz`` (the warped labels), the inverses with ``--inverse``,
  and ``NAME.json`` (the metrics), written last: a subject whose JSON is there is complete, and a
  second run skips it (every file is written to a temporary name and renamed, so a killed run
  leaves no partial file under an output's name; the second run removes the hidden temporaries
  it left). ``metrics.csv``: one row per subject, then a summary row.
- The model and the fixed images are loaded once (``register_files``' cache); the subjects run
  one after another, each on all of torch's threads.
- Under ``torchrun --nproc_per_node N -m fastwarp register --list ...`` (gloo on CPUs, NCCL on
  GPUs, several nodes as torchrun does it) rank ``r`` registers subjects ``r, r + N, ...`` on
  its own device, and rank 0 writes the one ``metrics.csv`` from every rank's rows (gathered);
  every rank returns the same exit status. A subject's result does not depend on the rank that
  registers it: with the same threads per process the outputs are the files one process writes. A subject that fails (an unreadable file,
  images of other dimensions) is reported in the CSV and on stderr, and the run goes on; the
  command's exit status is the number of subjects that failed (at most 100).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import RegisterConfig
from .data.nifti import nifti_stem
from .files import remove_stale, replacing

__all__ = ["LIST_FORMAT", "Subject", "read_pair_list", "subjects_from_dir", "register_cohort", "CSV_COLUMNS"]

LIST_FORMAT = "moving [fixed] [labels]"

CSV_COLUMNS = ("subject", "status", "moving", "fixed", "labels", "mean_dice_before", "mean_dice_after",
               "ncc_before", "ncc_after", "folding_fraction", "seconds", "error")
_NUMERIC = CSV_COLUMNS[5:11]

# RegisterConfig's per-subject paths: named by the cohort, not by the command line
PER_SUBJECT_OPTIONS = ("moving", "fixed", "labels", "output", "json", "transform", "labels_output", "matrix",
                       "flow", "figure")


@dataclass(frozen=True)
class Subject:
    """One registration of the cohort: its name (the outputs' stem), its files, and the list
    file's line that named it (None for a folder)."""

    name: str
    moving: str
    fixed: str
    labels: str | None = None
    line: int | None = None


def read_pair_list(path: str | os.PathLike, fixed: str | None = None) -> list[Subject]:
    """The subjects of a list file (module docstring); ``fixed``: the fixed image of lines that
    give none. Raises ValueError with every bad line's ``FILE:LINE: message``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"--list: no such file: {path}")
    errors, subjects = [], []

    def resolve(p):
        return str(p if pathlib.Path(p).is_absolute() else path.parent / p)

    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        where = f"{path}:{lineno}"
        parts = text.split()
        if len(parts) > 3:
            errors.append(f"{where}: expected '{LIST_FORMAT}', got {len(parts)} fields: {text!r}")
            continue
        moving = resolve(parts[0])
        fx = resolve(parts[1]) if len(parts) > 1 and parts[1] != "-" else fixed
        labels = resolve(parts[2]) if len(parts) > 2 else None
        if fx is None:
            errors.append(f"{where}: no fixed image: give it on the line ('{LIST_FORMAT}') or with --fixed")
            continue
        missing = [f"{what} {p}" for what, p in (("moving", moving), ("fixed", fx), ("labels", labels))
                   if p is not None and not os.path.isfile(p)]
        if missing:
            errors.append(f"{where}: no such file: " + ", ".join(missing))
            continue
        subjects.append(Subject(nifti_stem(os.path.basename(moving)), moving, fx, labels, lineno))
    errors += _duplicate_names(subjects, str(path))
    if errors:
        raise ValueError("\n".join(errors))
    if not subjects:
        raise ValueError(f"--list: {path} names no subjects")
    return subjects


def subjects_from_dir(folder: str | os.PathLike, fixed: str | None) -> list[Subject]:
    """Every image of ``folder`` (label maps found by their names) registered to ``fixed``."""
    from .data.subjects import find_volumes

    if fixed is None:
        raise ValueError("--moving-dir needs --fixed: the image every subject is registered to")
    if not os.path.isfile(fixed):
        raise ValueError(f"--fixed: no such file: {fixed}")
    if not os.path.isdir(folder):
        raise ValueError(f"--moving-dir: no such folder: {folder}")
    subjects = [Subject(nifti_stem(os.path.basename(v.image)), v.image, fixed, v.labels)
                for v in find_volumes(folder) if os.path.abspath(v.image) != os.path.abspath(fixed)]
    errors = _duplicate_names(subjects, str(folder))
    if errors:
        raise ValueError("\n".join(errors))
    return subjects


def _duplicate_names(subjects: Sequence[Subject], source: str) -> list[str]:
    first, errors = {}, []
    for s in subjects:
        if s.name in first:
            where = f"{source}:{s.line}" if s.line is not None else source
            errors.append(f"{where}: subject {s.name!r} again (its outputs would overwrite those of "
                          f"{first[s.name]}): rename one of the images")
        else:
            first[s.name] = s.moving if s.line is None else f"line {s.line}"
    return errors


def subject_config(subject: Subject, out_dir: str, options: dict) -> RegisterConfig:
    """The subject's ``fastwarp register`` configuration: its files, its outputs in ``out_dir``,
    and the cohort's ``options`` (RegisterConfig fields)."""
    return RegisterConfig(moving=subject.moving, fixed=subject.fixed, labels=subject.labels,
                          output=os.path.join(out_dir, subject.name + ".nii.gz"),
                          json=os.path.join(out_dir, subject.name + ".json"), **options)


def _complete(config: RegisterConfig) -> dict | None:
    """The metrics of an earlier run that wrote every output of ``config``, else None."""
    if not os.path.isfile(config.json) or not all(os.path.isfile(p) for p in config.outputs.values()):
        return None
    try:
        with open(config.json) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _row(subject: Subject, status: str, metrics: dict | None, error: str = "") -> dict:
    m = metrics or {}
    row = dict(subject=subject.name, status=status, moving=subject.moving, fixed=subject.fixed,
               labels=subject.labels or "", error=error)
    for key in _NUMERIC:
        value = m.get(key)
        row[key] = "" if value is None else f"{value:.6g}"
    return row


def _summary(rows: list[dict]) -> dict:
    done = [r for r in rows if r["status"] != "failed"]
    failed = len(rows) - len(done)
    summary = dict(subject="summary", moving="", fixed="", labels="", error="",
                   status=f"{len(done)} registered, {failed} failed")
    for key in _NUMERIC:
        values = [float(r[key]) for r in done if r[key] != ""]
        summary[key] = f"{sum(values) / len(values):.6g}" if values else ""
    summary["seconds"] = f"{sum(float(r['seconds']) for r in done if r['seconds'] != ''):.6g}"
    return summary


def _write_csv(path: str, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with replacing(path) as tmp, open(tmp, "w") as fh:
        fh.write(buf.getvalue())


def register_cohort(subjects: Sequence[Subject], out_dir: str | os.PathLike, options: dict | None = None,
                    progress: bool = True, log=None) -> dict:
    """Register every subject (module docstring) with ``options`` (the RegisterConfig fields
    that are not per-subject paths); returns ``{"rows", "failed", "csv", "seconds"}``, ``rows``
    as written to ``out_dir/metrics.csv`` (without the summary row)."""
    from .register import register_files

    options = dict(options or {})
    bad = sorted(set(options) & set(PER_SUBJECT_OPTIONS))
    if bad:
        raise ValueError(f"per-subject paths are named in the output folder, not given: {', '.join(bad)}")
    options["quiet"] = True
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"-o: {out_dir} is a file; with --list or --moving-dir it is the output folder")
    os.makedirs(out_dir, exist_ok=True)
    configs = [subject_config(s, out_dir, options) for s in subjects]  # checks the options once per subject
    from .runtime import start_processes

    procs = start_processes(options.get("device", "auto"))
    if procs.world > 1 and options.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available():
        options = dict(options, device=f"cuda:{procs.local_rank}")
        configs = [subject_config(s, out_dir, options) for s in subjects]
    mine = list(range(procs.rank, len(subjects), procs.world))
    # a killed run's temporaries of this rank's subjects (each is this rank's alone)
    remove_stale(*(path for i in mine for path in configs[i].outputs.values()))
    cache: dict = {}
    rows = {}
    start = time.perf_counter()
    bar = None
    if progress and procs.main:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), desc="subjects" + (f" (rank 0 of {procs.world})" if procs.world > 1 else ""),
                   unit="subject", disable=None)
    for i in mine:
        subject, config = subjects[i], configs[i]
        earlier = _complete(config)
        if earlier is not None:
            rows[i] = _row(subject, "done earlier", earlier)
        else:
            try:
                rows[i] = _row(subject, "registered", register_files(config, cache))
            except Exception as e:  # noqa: BLE001 - any failure of one subject is reported, the run goes on
                where = f" (line {subject.line})" if subject.line is not None else ""
                message = f"{type(e).__name__}: {e}".replace("\n", " ")
                print(f"fastwarp register: {subject.name}{where} failed: {message}", file=log or sys.stderr)
                rows[i] = _row(subject, "failed", None, message)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if procs.world > 1:
        import torch.distributed as dist

        gathered = [None] * procs.world
        dist.all_gather_object(gathered, rows)
        rows = {i: r for part in gathered for i, r in part.items()}
    rows = [rows[i] for i in sorted(rows)]
    csv_path = os.path.join(out_dir, "metrics.csv")
    if procs.main:
        remove_stale(csv_path)
        _write_csv(csv_path, rows + [_summary(rows)])
    if procs.world > 1:
        dist.barrier()  # the CSV is there when any rank returns
    failed = sum(r["status"] == "failed" for r in rows)
    return dict(rows=rows, failed=failed, csv=csv_path, seconds=time.perf_counter() - start, world=procs.world,
                rank=procs.rank)


def format_summary(result: dict) -> str:
    rows = result["rows"]
    s = _summary(rows)
    lines = [f"  {s['status']} ({sum(r['status'] == 'done earlier' for r in rows)} of them by an earlier run), "
             f"{result['seconds']:.1f} s"]
    for key, label in (("mean_dice_after", "mean Dice"), ("ncc_after", "NCC"), ("folding_fraction", "folding")):
        if s[key] != "" and not math.isnan(float(s[key])):
            lines.append(f"  {label} (mean over subjects): {float(s[key]):.4f}")
    return "\n".join(lines)
