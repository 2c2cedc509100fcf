"""``python -m fastwarp.app.bench.registration``: whole registrations of the embedded pair, fastwarp
against ANTs SyN and SimpleITK's diffeomorphic demons, in one run.

For each resolution (the embedded pair at 2 mm, 80x96x96; its 1 mm versions, 160x192x176, made by
``scripts/make_data.py --voxel-mm 1``), each direction (Colin27 -> MNI152 and back) and each
method, one registration of the intensity-normalized images
(:func:`~fastwarp.app.data.normalize_intensity`), reported as tissue Dice per label (1 CSF,
2 grey matter, 3 white matter) and their mean, the folding (% of voxels with det J <= 0 of the
displacement on the fixed grid, :func:`~fastwarp.app.metrics.jacobian_determinant`) and the wall
time of the registration call, every method with the same number of CPU threads.

Methods (:data:`METHODS`):

- ``identity``: no registration (the Dice before).
- ``network``, ``network+refine``, ``refine`` and their ``-diffeo`` twins: fastwarp's
  :func:`~fastwarp.app.register.register_pair` with the network (``--model CKPT``), the network
  then the instance refinement, or the refinement alone (:class:`~fastwarp.app.refine.RefineConfig`,
  its defaults; ``diffeomorphic=True`` for the twins, whose network, ``--model-diffeo CKPT``, is
  one trained with ``--diffeomorphic``). The network methods need those checkpoints, trained
  once beforehand; the published figures' are the demo's (``fastwarp demo -o DIR`` and
  ``fastwarp demo --diffeomorphic -o DIR``: a 2-D network on the embedded brains, some minutes
  on 2 cores; ``DIR/checkpoint.pt``). Without them the network methods are skipped.
- ``ants-syn``, ``ants-syn-long``: :func:`~fastwarp.app.bench.peers.ants_syn`, antspyx's ``ants.registration`` with
  ``type_of_transform="SyNOnly"`` (see there why not "SyN") and antspyx's default SyN schedule
  (``reg_iterations=(40, 20, 0)``), or the long one (100, 70, 50, 20).
- ``demons``, ``demons-long``: :func:`~fastwarp.app.bench.peers.sitk_demons`, SimpleITK's
  ``DiffeomorphicDemonsRegistrationFilter`` in SimpleITK's multi-resolution recipe (20
  iterations per level, or 50).

The pair is :func:`~fastwarp.app.data.embedded_pairs`'; the peers are
:mod:`fastwarp.app.bench.peers`'. Their fields are converted to fastwarp's convention
(:func:`~fastwarp.app.transforms.itk_to_voxel_displacement`) and every run checks the conversion: the moving image warped by :func:`fastwarp.warp` through the
converted field must equal the peer's own warped image (``warp check``, the largest difference).
The peers are optional (``pip install antspyx SimpleITK``); one that is not installed is listed
as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

import fastwarp

from ..data.contrast import t2_like
from ..data.subjects import EMBEDDED_DIRECTIONS, RegistrationPair, embedded_pairs
from ..metrics import dice, jacobian_determinant
from ..similarity import SIMILARITIES
from .baselines import BaselineUnavailable, _dist_version
from .peers import ants_syn, sitk_demons, warp_check

__all__ = ["Method", "METHODS", "run", "format_table", "format_markdown", "build_parser", "main"]

PROG = "python -m fastwarp.app.bench.registration"
LABELS = {1: "CSF", 2: "GM", 3: "WM"}
QUICK = {"ants": (4, 2, 0), "demons": (3, 2, 1)}  # --quick: a smoke run's iterations


# --------------------------------------------------------------------------- methods# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "identity", "fastwarp", "ants", "demons"
    description: str
    network: bool = False
    refine: bool = False
    diffeomorphic: bool = False
    schedule: str = "default"


METHODS = {m.name: m for m in [
    Method("identity", "identity", "no registration"),
    Method("network", "fastwarp", "fastwarp: the network's prediction", network=True),
    Method("network+refine", "fastwarp", "fastwarp: the network, then the refinement", network=True, refine=True),
    Method("refine", "fastwarp", "fastwarp: the refinement from the identity", refine=True),
    Method("network-diffeo", "fastwarp", "fastwarp --diffeomorphic: the diffeomorphic network", network=True,
           diffeomorphic=True),
    Method("network+refine-diffeo", "fastwarp", "fastwarp --diffeomorphic: the diffeomorphic network, then the "
           "diffeomorphic refinement", network=True, refine=True, diffeomorphic=True),
    Method("refine-diffeo", "fastwarp", "fastwarp --diffeomorphic: the diffeomorphic refinement from the identity",
           refine=True, diffeomorphic=True),
    Method("ants-syn", "ants", "ANTs SyNOnly, antspyx's default schedule 40x20x0"),
    Method("ants-syn-long", "ants", "ANTs SyNOnly, long schedule 100x70x50x20", schedule="long"),
    Method("demons", "demons", "SimpleITK diffeomorphic demons, 20 iterations at 1/4, 1/2, 1"),
    Method("demons-long", "demons", "SimpleITK diffeomorphic demons, 50 iterations at 1/4, 1/2, 1", schedule="long"),
]}


def _refine_config(method: Method, quick: bool, voxel_mm: float, similarity: str = "ncc"):
    from ..refine import RefineConfig, refine_defaults

    if quick:
        return RefineConfig(levels=(2, 1), iterations=(3, 2), diffeomorphic=method.diffeomorphic, similarity=similarity)
    # what fastwarp register runs
    return refine_defaults(voxel_mm, diffeomorphic=method.diffeomorphic, similarity=similarity)


# --------------------------------------------------------------------------- one run


def _row(pair: RegistrationPair, method: Method, **fields) -> dict:
    row = dict(method=method.name, kind=method.kind, direction=pair.direction, resolution=pair.resolution,
               shape=list(pair.fixed.shape), status="ok", reason=None, dice=None, mean_dice=None,
               folding_percent=None, jacobian_min=None, seconds=None, seconds_runs=None, warp_check=None, settings=None)
    row.update(fields)
    return row


def _scores(warped_labels, fixed_labels, disp: torch.Tensor) -> dict:
    d = dice(torch.as_tensor(np.asarray(warped_labels)), torch.as_tensor(np.asarray(fixed_labels)), list(LABELS))
    det = jacobian_determinant(disp.double())
    return dict(dice={int(k): v for k, v in d.items()}, mean_dice=sum(d.values()) / len(d) if d else float("nan"),
                folding_percent=100.0 * float((det <= 0).double().mean()), jacobian_min=float(det.min()))


def _run_repeated(pair: RegistrationPair, method: Method, models: dict, settings: dict) -> dict:
    """:func:`_run_one` ``settings["repeats"]`` times: the first run's row, ``seconds`` the median of
    the runs' (``seconds_runs`` all of them); a run whose Dice or folding differs is an error."""
    row = _run_one(pair, method, models, settings)
    runs = [row["seconds"]]
    for _ in range(settings["repeats"] - 1):
        if row["status"] != "ok" or method.kind == "identity":
            break
        again = _run_one(pair, method, models, settings)
        if (again["dice"], again["folding_percent"]) != (row["dice"], row["folding_percent"]):
            raise RuntimeError(f"{method.name} {pair.direction}: a repeated run gave other results "
                               f"({again['mean_dice']} vs {row['mean_dice']})")
        runs.append(again["seconds"])
    if len(runs) > 1:
        row.update(seconds=float(np.median(runs)), seconds_runs=runs)
    return row


def _run_one(pair: RegistrationPair, method: Method, models: dict, settings: dict) -> dict:
    quick = settings["quick"]
    if method.kind == "identity":
        zero = torch.zeros(1, 3, *pair.fixed.shape)
        return _row(pair, method, seconds=0.0, **_scores(pair.moving_labels, pair.fixed_labels, zero))
    if method.kind == "ants":
        schedule = QUICK["ants"] if quick else method.schedule
        peer = ants_syn(pair.moving, pair.fixed, pair.moving_labels, schedule, settings["seed"], pair.affine,
                        settings["ants_transform"], settings["threads"])
    elif method.kind == "demons":
        schedule = QUICK["demons"] if quick else method.schedule
        peer = sitk_demons(pair.moving, pair.fixed, pair.moving_labels, schedule, pair.affine,
                           threads=settings["threads"])
    else:
        return _run_fastwarp(pair, method, models, settings)
    return _row(pair, method, seconds=peer.seconds, warp_check=warp_check(pair.moving, peer), settings=peer.settings,
                **_scores(peer.warped_labels, pair.fixed_labels, peer.disp))


def _run_fastwarp(pair: RegistrationPair, method: Method, models: dict, settings: dict) -> dict:
    from ..register import register_pair

    model, downsample, used = None, 1, {}
    if method.network:
        entry = models.get(method.diffeomorphic)
        if entry is None or isinstance(entry, str):
            return _row(pair, method, status="skipped", reason=entry or "no model")
        model, ckpt_path, ckpt_downsample, trained_mm = entry
        # a network sees the resolution it was trained at: downsample the finer data to it
        downsample = max(1, round(ckpt_downsample * trained_mm / pair.resolution))
        used.update(model=ckpt_path, downsample=downsample)
    refine = _refine_config(method, settings["quick"], pair.resolution, settings["similarity"]) if method.refine else None
    if refine is not None:
        used["refine"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(refine).items()}
    res = register_pair(pair.moving, pair.fixed, model=model, downsample=downsample, refine=refine,
                        moving_labels=pair.moving_labels, fixed_labels=pair.fixed_labels, device="cpu")
    used["stages"] = dict(res.stages)
    d = {int(k): v for k, v in res.metrics["dice_after"].items()}
    det = jacobian_determinant(res.disp.double().cpu())
    return _row(pair, method, seconds=res.seconds, settings=used, dice=d, mean_dice=res.metrics["mean_dice_after"],
                folding_percent=100.0 * res.metrics["folding_fraction"], jacobian_min=float(det.min()))


def _load_models(methods: Sequence[Method], model: str | None, model_diffeo: str | None, out) -> dict:
    """{diffeomorphic: (model, path, downsample, trained_mm) or the reason there is none}."""
    from ..checkpoints import load_checkpoint, model_from_checkpoint

    models = {}
    for diffeo in sorted({m.diffeomorphic for m in methods if m.network}):
        path = model_diffeo if diffeo else model
        if path in (None, "none"):
            option = "--model-diffeo" if diffeo else "--model"
            models[diffeo] = (f"no model: pass {option} CKPT (trained once by `fastwarp demo "
                              f"{'--diffeomorphic ' if diffeo else ''}-o DIR`: DIR/checkpoint.pt)")
            continue
        ckpt = load_checkpoint(path)
        net = model_from_checkpoint(ckpt)
        if bool(ckpt.get("config", {}).get("diffeomorphic", diffeo)) != diffeo:
            print(f"{PROG}: warning: {path} is {'not ' if diffeo else ''}a diffeomorphic network", file=out)
        args = ckpt.get("args", {})
        trained_mm = 2.0  # the embedded pair's (fastwarp train's default data, the demo's)
        if args.get("data"):
            print(f"{PROG}: note: {path} was trained on {args['data']}; taken to be 2 mm data", file=out)
        models[diffeo] = (net, path, int(args.get("downsample", 1) or 1), trained_mm)
    return models


def _warm_up(methods: Sequence[Method]) -> None:
    """One tiny registration on fastwarp's ops, untimed: the first call of a process loads kernels
    and allocator pools that no later registration pays for again."""
    if any(m.kind == "fastwarp" for m in methods):
        from ..refine import RefineConfig, refine

        g = torch.Generator().manual_seed(0)
        a, b = torch.rand(1, 1, 16, 16, 16, generator=g), torch.rand(1, 1, 16, 16, 16, generator=g)
        refine(a, b, None, RefineConfig(levels=(1,), iterations=2))
        refine(a, b, None, RefineConfig(levels=(1,), iterations=2, diffeomorphic=True))


def run(pairs: Sequence[RegistrationPair], methods: Sequence[str] = tuple(METHODS), threads: int = 2, seed: int = 0,
        model: str | None = None, model_diffeo: str | None = None, quick: bool = False,
        ants_transform: str = "SyNOnly", repeats: int = 1, command: str = PROG, out=None,
        similarity: str = "ncc", contrast: str = "t1") -> dict:
    """Every method on every pair, in this process, printing each row as it comes (``repeats``
    times each: the seconds are the median, the results must be the same every time); returns
    ``{"meta": ..., "rows": [...]}``. ``model`` / ``model_diffeo``: the network methods'
    checkpoints (None: those methods are skipped). A peer that is not installed or fails becomes
    a row saying so; fastwarp's own failure propagates. ``similarity``: fastwarp's refinement's
    (ANTs SyN uses Mattes MI, demons intensity differences after histogram matching);
    ``contrast="t2"``: each moving image replaced by a T2-like version of it
    (:func:`~fastwarp.app.data.contrast.t2_like`, seed 0), the multi-modal case."""
    out = sys.stdout if out is None else out
    if contrast == "t2":
        pairs = [dataclasses.replace(p, moving=t2_like(p.moving, seed=0)) for p in pairs]
    elif contrast != "t1":
        raise ValueError(f"contrast must be 't1' or 't2', got {contrast!r}")
    chosen = [METHODS[name] for name in methods]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    from .runner import _cpu_model, _git_commit

    try:
        meta = dict(tool="fastwarp.app.bench.registration", command=command,
                    date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    cpu=_cpu_model(), cpu_count=os.cpu_count(), threads=threads, seed=seed, quick=quick,
                    repeats=repeats,
                    torch=torch.__version__, fastwarp=fastwarp.__version__, git_commit=_git_commit(),
                    python=platform.python_version(), ants_transform=ants_transform,
                    similarity=similarity, contrast=contrast,
                    peers={"antspyx": _dist_version("antspyx"), "SimpleITK": _dist_version("SimpleITK", "simpleitk")},
                    loadavg_start=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    methods={m.name: m.description for m in chosen})
        models = _load_models(chosen, model, model_diffeo, out)
        _warm_up(chosen)
        print(format_table([], header=True), file=out, flush=True)
        settings = dict(threads=threads, seed=seed, quick=quick, ants_transform=ants_transform, repeats=repeats,
                        similarity=similarity)
        rows = []
        for pair in pairs:
            for method in chosen:
                try:
                    row = _run_repeated(pair, method, models, settings)
                except BaselineUnavailable as e:
                    row = _row(pair, method, status="not installed" if not e.installed else "unavailable",
                               reason=e.reason)
                except Exception as e:  # noqa: BLE001  (a peer's failure must not end the run)
                    if method.kind in ("fastwarp", "identity"):
                        raise
                    row = _row(pair, method, status="error", reason=f"{type(e).__name__}: {e}")
                rows.append(row)
                print(format_table([row], header=False), file=out, flush=True)
        meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        return dict(meta=meta, rows=rows)
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- tables

_HEADERS = ["method", "direction", "mm", "Dice CSF", "Dice GM", "Dice WM", "mean Dice", "folding %", "seconds",
            "warp check"]
_WIDTHS = [22, 18, 3, 8, 8, 8, 9, 9, 8, 10]


def _cells(row: dict) -> list[str]:
    head = [row["method"], row["direction"], f"{row['resolution']:g}"]
    if row["status"] != "ok":
        return head + [row["status"] + ("" if row["status"] == "not installed" else f": {row['reason']}")]
    d = row["dice"] or {}
    return head + [f"{d[k]:.4f}" if k in d else "" for k in LABELS] + [
        f"{row['mean_dice']:.4f}", f"{row['folding_percent']:.4f}", f"{row['seconds']:.2f}",
        "" if row["warp_check"] is None else f"{row['warp_check']:.1e}"]


def format_table(rows: Sequence[dict], header: bool = True) -> str:
    """The console table (``header``: with its header line)."""
    lines = []
    if header:
        lines.append(" ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(_HEADERS, _WIDTHS))))
    for row in rows:
        cells = _cells(row)
        if len(cells) == 4:  # a status
            lines.append(" ".join(c.ljust(w) for c, w in zip(cells[:3], _WIDTHS)) + " " + cells[3])
        else:
            lines.append(" ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, _WIDTHS))))
    return "\n".join(lines).rstrip()


def format_markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"#### `{meta['command']}`, {meta['date'][:10]}", ""]
    commit = f" at commit {meta['git_commit']}" if meta.get("git_commit") else ""
    lines.append(f"- Machine: {meta['cpu']}, {meta['threads']} thread(s) for every method (torch, ITK), "
                 f"{meta['cpu_count']} CPU(s) visible")
    lines.append(f"- torch {meta['torch']}, fastwarp {meta['fastwarp']}{commit}; "
                 + ", ".join(f"{k} {v}" for k, v in meta["peers"].items()))
    if meta.get("loadavg_start") is not None:
        def loads(key):
            return ", ".join(f"{x:.2f}" for x in meta[key])

        lines.append(f"- Load average (1, 5, 15 min) at the start: {loads('loadavg_start')}"
                     + (f"; at the end: {loads('loadavg_end')}" if meta.get("loadavg_end") else ""))
    if meta.get("contrast", "t1") != "t1" or meta.get("similarity", "ncc") != "ncc":
        lines.append(f"- moving images' contrast: {meta.get('contrast', 't1')} (fixed: T1); fastwarp's similarity: "
                     f"{meta.get('similarity', 'ncc')}")
    lines.append(f"- ANTs transform: {meta['ants_transform']}; seed {meta['seed']}"
                 + (f"; seconds: the median of {meta['repeats']} runs of each registration (same results each time)"
                    if meta.get("repeats", 1) > 1 else "")
                 + ("; **quick** (smoke-run iterations)" if meta.get("quick") else ""))
    lines.append("")
    lines.append("| " + " | ".join(_HEADERS) + " |")
    lines.append("|---|---|---:|" + "---:|" * (len(_HEADERS) - 3))
    for row in result["rows"]:
        cells = _cells(row)
        if row["kind"] == "fastwarp":
            cells[0] = f"**{cells[0]}**"
        if len(cells) == 4:
            cells += [""] * (len(_HEADERS) - 4)
        lines.append("| " + " | ".join(" ".join(c.replace("|", "\\|").split()) for c in cells) + " |")
    lines.append("")
    lines.append("Folding: % of voxels of the fixed grid with det J ≤ 0. Seconds: the wall time of the registration "
                 "call. Warp check: the largest difference between fastwarp.warp through the peer's converted field "
                 "and the peer's own warped image (intensities in [0, 1]).")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- command


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Register the embedded pair (2 mm, and its 1 mm versions) with fastwarp's methods, ANTs SyN and "
                    "SimpleITK's diffeomorphic demons in one run: tissue Dice, folding, seconds.",
        epilog="methods: " + "; ".join(f"{m.name}: {m.description}" for m in METHODS.values()))
    p.add_argument("--resolution", nargs="+", type=float, choices=(2.0, 1.0), default=[2.0],
                   help="2 (the embedded pair) and/or 1 (its 1 mm versions: scripts/make_data.py --fetch --voxel-mm 1)")
    p.add_argument("--directions", default="both", choices=("both",) + tuple(EMBEDDED_DIRECTIONS))
    p.add_argument("--methods", default="all", help="comma-separated subset of the methods (default all)")
    p.add_argument("--model", metavar="CKPT",
                   help="checkpoint of the network methods (trained once by `fastwarp demo -o DIR`: DIR/checkpoint.pt); "
                        "without it they are skipped")
    p.add_argument("--model-diffeo", metavar="CKPT",
                   help="the same for the -diffeo methods (`fastwarp demo --diffeomorphic -o DIR`)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every method (torch, ITK; default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ants-transform", default="SyNOnly", choices=("SyNOnly", "SyN"),
                   help="SyNOnly (default; the pair is already on one MNI grid) or SyN (an affine stage first)")
    p.add_argument("--similarity", default="ncc", choices=SIMILARITIES,
                   help="of fastwarp's refinement (default ncc; ANTs SyN uses Mattes MI, demons intensity differences)")
    p.add_argument("--contrast", default="t1", choices=("t1", "t2"),
                   help="t2: register a T2-like version of each moving image (fastwarp.app.data.contrast.t2_like: a "
                        "non-monotonic intensity map, a bias field, noise) to the T1 fixed one, the multi-modal case")
    p.add_argument("--repeats", type=int, default=1,
                   help="run each registration this many times and report the median seconds (default 1)")
    p.add_argument("--quick", action="store_true", help="a smoke run: every method with a few iterations")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    p.add_argument("--markdown", metavar="PATH", help="write the results as Markdown here")
    return p


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        parser.error(f"--methods takes a comma-separated subset of {','.join(METHODS)}, got {args.methods!r}")
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be at least 1")
    # before antspyx is imported (ANTs also reads it at each registration)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    directions = tuple(EMBEDDED_DIRECTIONS) if args.directions == "both" else (args.directions,)
    try:
        pairs = embedded_pairs(list(dict.fromkeys(args.resolution)), directions)
    except FileNotFoundError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    command = " ".join([prog, shlex.join(argv)]).strip()
    result = run(pairs, methods, args.threads, args.seed, args.model, args.model_diffeo,
                 args.quick, args.ants_transform, args.repeats, command, similarity=args.similarity,
                 contrast=args.contrast)
    for row in result["rows"]:
        if row["status"] == "error":
            print(f"{prog}: warning: {row['method']} {row['direction']} failed: {row['reason']}", file=sys.stderr)
        elif row["status"] == "skipped":
            print(f"{prog}: note: {row['method']} skipped: {row['reason']}", file=sys.stderr)
    for path, text in ((args.json, lambda: json.dumps(result, indent=1) + "\n"),
                       (args.markdown, lambda: format_markdown(result))):
        if path:
            with open(path, "w") as f:
                f.write(text())
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
