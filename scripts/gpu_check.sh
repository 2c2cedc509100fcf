#!/usr/bin/env bash
# scripts/gpu_check.sh: everything fastwarp needs a real GPU to check, in one command that ends
# within a budget (default 510 s, builds included), with a one-screen summary printed last.
#
#   bash scripts/gpu_check.sh [--dry-run] [--budget SECONDS] REPORT_DIR
#
# Made for the lent H200 (sm_90; python3 with torch, nvcc, compute-sanitizer; no network): the
# packages it lacks travel as wheels in .whl/ (scripts/gpu_wheels.sh makes them here), e.g. with
# the device tool's `run`, carry [".whl"]:   bash scripts/gpu_check.sh $OUT/gpu
#
# The steps, and what each proves. Every step has a timeout and is recorded whatever happened
# before it; after a failed build, the steps that need the extension are recorded as skipped.
#   env          the GPU, driver, torch, nvcc and compute-sanitizer versions (summary header)
#   wheels       .whl/*.whl installed with pip --no-index --no-deps --target $GPU_CHECK_SITE
#                (/tmp/site), put first on PYTHONPATH: the machine's own environment is not touched
#   sdist        .whl/src/*.tar.gz (fused_lncc: no wheel on PyPI) compiled there against the
#                machine's torch for sm_90, in the background while fastwarp builds
#   build        setup.py build_ext --inplace, FASTWARP_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0,
#                MAX_JOBS=nproc: the CUDA sources compile for Hopper against that torch (timed)
#   import       import fastwarp from the repository; has_cuda_kernels(); one warp on the GPU
#   tests        pytest -m cuda (the "cuda" param of every device-parametrized test; pytest-xdist
#                when present): the kernels agree with the references on a real GPU
#   memcheck, racecheck, synccheck
#                compute-sanitizer (--error-exitcode 1, --target-processes all) over
#                pytest tests/test_launch_geometry.py -m "cuda and sanitize" -x, alongside `tests`: no invalid or misaligned
#                access (torch's caching allocator off, so each tensor is its own allocation), no
#                shared-memory race, no barrier misuse. No test selected (exit 5): EMPTY, noted.
#                Each is time-boxed (100 s): stopped there with no error reported, it is PARTIAL.
#   tests_large  tests/test_cuda_large.py: warp, grid_sample and ncc at real sizes in float32 and
#                bfloat16 against float64 references, and past 2**31 elements (64-bit indexing)
#   bench        python -m fastwarp bench --device cuda --size full: every installed baseline,
#                bandwidth against a device copy -> REPORT_DIR/bench.json, bench.md
#   bench_fused  benchmarks/bench_ncc.py's 2x16x128^3 window-7 case (fastwarp, fused_lncc,
#                FireANTs when installed) -> REPORT_DIR/bench_fused.json: the NCC issue's GPU
#                goal (their agreement with fastwarp is tested in the pytest -m cuda step)
#   train_fp32, train_bf16
#                python -m fastwarp train, 3-D, on the embedded brains, ~1 minute each (the bf16
#                run's length is scaled to the time left, from the fp32 run's step rate)
#   register     python -m fastwarp register with the fp32 model on the held-out pair
#                Colin27 -> MNI152, then refined for the pair (--refine --diffeomorphic):
#                time (network, refinement), NCC, Dice, folding
#
# REPORT_DIR receives at most 8 files (what the device tool brings back): summary.txt (printed
# at the end), summary.json, logs.tar.gz (every log, junit XML, train logs and figures, the
# register metrics), bench.json, bench.md, bench_fused.json, registration.png. The work folder
# ($GPU_CHECK_WORK, default a new /tmp/gpu_check.*) keeps everything else. The summary and the
# archive are refreshed after every step, so a run cut short still leaves its reports.
# Time: each step gets min(its cap, the time to the deadline less the least time of each later
# step); a step that would get less than its own least time is skipped (recorded, and failing).
# Exit status: 0 when every step passed (EMPTY and PARTIAL included), 1 otherwise, and 1 when on
# the GPU a test step passed no test (all skipped: the GPU not seen).
#
# --dry-run runs here, without a GPU, in well under a minute, and checks that the script
# cannot rot: bash syntax; the tools and Python modules it uses; the wheel list and .whl/
# (scripts/gpu_wheels.sh --check); that setup.py build_ext takes the build options; that
# fastwarp imports (the dry run never builds: build it first, `pip install --no-build-isolation
# -e .`); that `fastwarp train`, `register` and `bench` accept the exact argument lists of the
# real run; that pytest collects each selection with the real options (-m cuda, the large
# tests, the sanitizers' launch-geometry cases, the fused benchmark); the same bench, train and register
# command lines on the CPU at tiny sizes; the summary on a canned run
# (scripts/gpu_summary.py --selftest) and on this run; and that REPORT_DIR got its files.
#
# Environment: PYTHON (default python3), GPU_CHECK_SITE (/tmp/site), GPU_CHECK_WORK,
# GPU_CHECK_COMMIT (the commit, for the report: the tree that travels has no .git),
# GPU_CHECK_XDIST (workers for `tests`, default 4 when pytest-xdist is importable, 0: none),
# GPU_CHECK_TRAIN_EPOCHS / GPU_CHECK_TRAIN_STEPS (default 4 x 400), GPU_CHECK_SANITIZER_CAP
# (seconds per sanitizer, default 100), GPU_CHECK_SKIP (steps to skip, comma-separated). For a
# rehearsal of the real run on a machine without a GPU (its GPU steps then fail or skip, but the
# flow, the records and the reports are the real ones): GPU_CHECK_DEVICE=cpu (bench, train,
# register), GPU_CHECK_BENCH_ARGS (e.g. "--size tiny --cases warp,ncc"), GPU_CHECK_TRAIN_ARGS
# (e.g. "--enc 4 8 --dec 8 8 4").

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
DRY=0
BUDGET=""
REPORT=""
usage() { sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
        --dry-run) DRY=1 ;;
        --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
        --budget=*) BUDGET=${1#*=} ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "gpu_check: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) [[ -z $REPORT ]] || { echo "gpu_check: one REPORT_DIR only" >&2; exit 2; }; REPORT=$1 ;;
    esac
    shift
done
[[ -n $REPORT ]] || { usage >&2; exit 2; }
BUDGET=${BUDGET:-$((DRY ? 150 : 510))}
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget takes whole seconds, got $BUDGET" >&2; exit 2; }

mkdir -p "$REPORT" || exit 2
REPORT=$(cd "$REPORT" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$WORK"/logs "$WORK"/junit "$WORK"/argv || exit 2
WORK=$(cd "$WORK" && pwd)
SITE=${GPU_CHECK_SITE:-/tmp/site}
STEPS=$WORK/steps.tsv
printf 'name\tstatus\trc\tseconds\ttimeout\tnote\n' >"$STEPS"
START=$(date +%s)
DEADLINE=$((START + BUDGET))
NPROC=$(nproc 2>/dev/null || echo 2)

export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
cd "$ROOT" || exit 2

log() { echo "[$(date +%T)] $*"; }

# ---------------------------------------------------------------------------- steps and budget

# Steps in order, each with its longest timeout (CAP) and the least time it is worth starting
# with (MIN). Before a step starts it gets min(CAP, time to the deadline less the MINs of the
# steps after it); below its MIN it is skipped, so a slow early step cannot starve all later ones.
ORDER=(env wheels build import group tests_large bench bench_fused train_fp32 train_bf16 register)
declare -A CAP=([env]=40 [wheels]=60 [build]=300 [import]=60 [group]=150 [tests_large]=120 [bench]=150
    [bench_fused]=75 [train_fp32]=120 [train_bf16]=120 [register]=60)
declare -A MIN=([env]=5 [wheels]=10 [build]=60 [import]=10 [group]=40 [tests_large]=30 [bench]=45
    [bench_fused]=25 [train_fp32]=30 [train_bf16]=30 [register]=20)
if ((DRY)); then
    ORDER=(env syntax tools wheels build import argv collect bench train_fp32 register summary)
    CAP=([env]=20 [syntax]=10 [tools]=30 [wheels]=20 [build]=30 [import]=30 [argv]=30 [collect]=60 [bench]=60
        [train_fp32]=60 [register]=60 [summary]=20)
    MIN=([env]=2 [syntax]=2 [tools]=2 [wheels]=2 [build]=5 [import]=5 [argv]=5 [collect]=10 [bench]=10
        [train_fp32]=10 [register]=10 [summary]=5)
fi

# budget NAME: prints the timeout NAME gets now (0: not worth starting)
budget() {
    local name=$1 rest=0 after=0 s t now
    for s in "${ORDER[@]}"; do
        ((after)) && rest=$((rest + MIN[$s]))
        [[ $s == "$name" ]] && after=1
    done
    now=$(date +%s)
    t=$((DEADLINE - now - rest))
    ((t > CAP[$name])) && t=${CAP[$name]}
    ((t < MIN[$name])) && t=0
    echo "$t"
}

record() { # name status rc seconds timeout note
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >>"$STEPS"
}

skipped() { # name reason
    record "$1" SKIPPED - 0 - "$2"
    log "--- $1: SKIPPED ($2)"
}

# run_step [--note TEXT] [--empty-ok] [--count-note] [--sanitizer] NAME TIMEOUT CMD...: runs CMD
# under `timeout` (which signals its whole process group), output to logs/NAME.log, and records
# ok / FAILED / TIMEOUT; with --empty-ok pytest's exit 5 (no test selected) is EMPTY; with
# --count-note the note is pytest --collect-only's count; with --sanitizer (implies --empty-ok)
# the note counts the tests passed and the sanitizer's error reports, and a run stopped at its
# time box with no error report is PARTIAL (EMPTY and PARTIAL do not fail the run). Returns
# CMD's status.
run_step() {
    local empty_ok=0 note="" count_note=0 sanitizer=0
    while [[ $1 == --* ]]; do
        case $1 in
            --empty-ok) empty_ok=1 ;;
            --count-note) count_note=1 ;;
            --sanitizer) sanitizer=1 empty_ok=1 ;;
            --note) note=$2; shift ;;
        esac
        shift
    done
    local name=$1 t=$2; shift 2
    local logf=$WORK/logs/$name.log t0 t1 rc status secs
    if [[ ",${GPU_CHECK_SKIP:-}," == *",$name,"* ]]; then
        skipped "$name" "GPU_CHECK_SKIP"
        return 0
    fi
    # a shell function runs in a child bash (timeout runs programs): its helpers are exported
    if declare -F "$1" >/dev/null; then set -- bash -c '"$@"' _ "$@"; fi
    local shown="$*"
    shown=${shown//$'\n'/ }
    log ">>> $name (timeout ${t}s): ${shown:0:240}"
    { echo "# $name: $*"; echo "# started $(date -u +%FT%TZ), timeout ${t}s"; } >"$logf"
    t0=$(date +%s.%N)
    timeout --kill-after=15 "$t" "$@" >>"$logf" 2>&1 </dev/null
    rc=$?
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    if ((rc == 0)); then
        status=ok
    elif ((rc == 124 || rc == 137)) && awk -v s="$secs" -v t="$t" 'BEGIN { exit !(s >= t - 1) }'; then
        status=TIMEOUT
    elif ((rc == 5 && empty_ok)); then
        status=EMPTY
        note=${note:-no test selected}
    else
        status=FAILED
    fi
    if ((sanitizer)); then  # what the sanitized pytest got through, and the error reports
        local passed reports
        passed=$(grep -c " PASSED" "$logf")
        reports=$(grep -E '^========= [^ ]' "$logf" | grep -cvE '^========= (COMPUTE-SANITIZER|ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|Target application returned|Warning|Note)')
        note="$passed tests passed, $reports error reports"
        if [[ $status == TIMEOUT ]]; then
            note="time-boxed at ${t}s: $note"
            ((reports == 0)) && status=PARTIAL
        fi
    fi
    if ((count_note)); then  # pytest --collect-only's count
        note=$(grep -Eo "[0-9]+(/[0-9]+)? tests? collected( \([0-9]+ deselected\))?|no tests collected( \([0-9]+ deselected\))?" "$logf" | tail -1)
    fi
    echo "# ended $(date -u +%FT%TZ): $status (exit $rc) after ${secs}s" >>"$logf"
    record "$name" "$status" "$rc" "$secs" "$t" "$note"
    log "<<< $name: $status (exit $rc) in ${secs}s"
    if [[ $status == FAILED || $status == TIMEOUT ]]; then
        tail -n 15 "$logf" | sed "s/^/    $name| /"
    fi
    return "$rc"
}

# guarded NAME CMD...: run_step with the budget's timeout, or record it skipped
guarded() {
    local opts=()
    while [[ $1 == --* ]]; do
        opts+=("$1")
        [[ $1 == --note ]] && { opts+=("$2"); shift; }
        shift
    done
    local name=$1; shift
    local t
    t=$(budget "$name")
    if ((t == 0)); then
        skipped "$name" "out of time ($(($(date +%s) - START)) s of $BUDGET s used)"
        return 1
    fi
    run_step "${opts[@]}" "$name" "$t" "$@"
}

finalize() {
    local now
    now=$(date +%s)
    sed -i "/^elapsed=/d" "$WORK/meta.txt" 2>/dev/null
    echo "elapsed=$((now - START))" >>"$WORK/meta.txt"
    if ! timeout 60 "$PY" "$ROOT/scripts/gpu_summary.py" --work "$WORK" --report "$REPORT" \
        >"$WORK/logs/summary_writer.log" 2>&1; then
        { echo "gpu_summary.py failed (see logs/summary_writer.log); the steps:"; cat "$STEPS"; } >"$REPORT/summary.txt"
    fi
    cp "$REPORT/summary.txt" "$WORK/summary.txt" 2>/dev/null
    # (written beside WORK, then moved: REPORT_DIR never holds a partial archive)
    tar -czf "$WORK.logs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='.fastwarp-*' --exclude='*.nii.gz' \
        --exclude=build-temp --exclude=build-lib . 2>/dev/null &&
        mv -f "$WORK.logs.tar.gz" "$REPORT/logs.tar.gz"
}

on_signal() {
    trap - INT TERM
    log "interrupted: writing the reports"
    record interrupted FAILED 130 0 - "signal"
    finalize
    cat "$REPORT/summary.txt"
    exit 130
}
trap on_signal INT TERM

failed_any() { awk -F'\t' 'NR > 1 && ($2 == "FAILED" || $2 == "TIMEOUT" || $2 == "SKIPPED") { f = 1 } END { exit !f }' "$STEPS"; }

step_ok() { awk -F'\t' -v n="$1" '$1 == n { s = $2 } END { exit !(s == "ok") }' "$STEPS"; }

# ---------------------------------------------------------------------------- command lines

EMB=$ROOT/fastwarp/app/data/embedded
SANITIZER_CAP=${GPU_CHECK_SANITIZER_CAP:-100}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
read -r -a BENCH_EXTRA <<<"${GPU_CHECK_BENCH_ARGS:-}"
read -r -a TRAIN_EXTRA <<<"${GPU_CHECK_TRAIN_ARGS:-}"
TRAIN_EPOCHS=${GPU_CHECK_TRAIN_EPOCHS:-4}
TRAIN_STEPS=${GPU_CHECK_TRAIN_STEPS:-400}
WORKERS=$((NPROC > 5 ? NPROC - 4 : 1))
((WORKERS > 12)) && WORKERS=12

# The argument lists of `python -m fastwarp ...`, shared by the real run and the dry run.
train_argv() { # variant device epochs steps output [extra...]
    local variant=$1 device=$2 epochs=$3 steps=$4 out=$5; shift 5
    ARGV=(train --ndim 3 --epochs "$epochs" --steps "$steps" --device "$device" --lr 1e-3 --max-disp 3
        --seed 0 --workers "$WORKERS" --quiet --output "$out" "$@")
    [[ $variant == bf16 ]] && ARGV+=(--bf16)
    return 0
}
register_argv() { # checkpoint device output_dir
    ARGV=(register "$EMB/colin27_t1.nii.gz" "$EMB/mni152_t1.nii.gz" --model "$1" --device "$2"
        --output "$3/colin27_to_mni152.nii.gz" --flow "$3/colin27_to_mni152_flow.nii.gz"
        --labels "$EMB/colin27_labels.nii.gz" --fixed-labels "$EMB/mni152_labels.nii.gz"
        --figure "$3/colin27_to_mni152.png" --json "$3/metrics.json" --refine --diffeomorphic --quiet)
}
bench_argv() { # device size [extra...]
    local device=$1 size=$2; shift 2
    ARGV=(bench --device "$device" --size "$size" --json "$REPORT/bench.json" --markdown "$REPORT/bench.md" "$@")
}
save_argv() { printf '%s\n' "${ARGV[@]}" >"$WORK/argv/$1.txt"; }

# (the dry run's collections write their empty junit files aside, not where the summary reads)
JUNIT=$WORK/junit
((DRY)) && JUNIT=$WORK/junit-dry && mkdir -p "$JUNIT"
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfEs)
SAN_PYTEST=("$PY" -m pytest -p no:cacheprovider -v -rfEs)  # -v: each test's outcome, counted if time-boxed
TESTS_ARGS=(-m cuda --ignore=tests/test_cuda_large.py --durations=10 --junitxml "$JUNIT/tests.xml")
LARGE_ARGS=(tests/test_cuda_large.py -m cuda --durations=0 --junitxml "$JUNIT/tests_large.xml")
# compute-sanitizer: the multi-block launch geometry (every warp, grid_sample and tiled NCC
# kernel, several blocks, partial last ones): 32 cases, short enough for three tools
SANITIZE_ARGS=(tests/test_launch_geometry.py -m "cuda and sanitize" -x)
FUSED_K="test_ncc and cuda and 3d-fused-lncc and not both and (fastwarp or fused_lncc or fireants)"
FUSED_ARGS=(benchmarks/bench_ncc.py -k "$FUSED_K" --benchmark-json "$REPORT/bench_fused.json"
    --benchmark-max-time 0.5 --benchmark-min-rounds 10)

# find_cuda_home: the CUDA toolkit (as setup.py finds it): $CUDA_HOME when it is one, else the
# toolkit of the nvcc on PATH (through symlinks and wrapper scripts), else /usr/local/cuda*
find_cuda_home() {
    local c nvcc cands=("${CUDA_HOME:-}")
    if nvcc=$(command -v nvcc); then
        cands+=("$(dirname "$(dirname "$(readlink -f "$nvcc")")")")
        c=$(grep -Eo '[^ "'"'"']+/bin/nvcc' "$(readlink -f "$nvcc")" 2>/dev/null | head -1)
        [[ -n $c ]] && cands+=("$(dirname "$(dirname "$c")")")
    fi
    cands+=(/usr/local/cuda /usr/local/cuda-*)
    for c in "${cands[@]}"; do
        [[ -n $c && -f $c/include/cuda_runtime.h && -x $c/bin/nvcc ]] && { echo "$c"; return 0; }
    done
    return 1
}

find_sanitizer() {
    local c
    for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
        "${CUDA_HOME:-/nonexistent}/compute-sanitizer/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer \
        /usr/local/cuda/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
        [[ -n $c && -x $c ]] && { echo "$c"; return 0; }
    done
    return 1
}

write_meta() {
    local gpu torch_v nvcc_v san_v
    gpu=$(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
    torch_v=$(timeout 60 "$PY" -c 'import torch, sys; print(torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())' 2>/dev/null)
    nvcc_v=$(timeout 20 nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' | head -1)
    san_v=$(timeout 20 "$(find_sanitizer || echo compute-sanitizer)" --version 2>/dev/null | tail -1)
    {
        echo "date=$(date -u +%FT%TZ)"
        echo "mode=$( ((DRY)) && echo dry-run || echo gpu)"
        echo "commit=${GPU_CHECK_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
        echo "gpu=${gpu:-no GPU (nvidia-smi absent)}"
        echo "torch=${torch_v:-not importable}"
        echo "nvcc=${nvcc_v:+nvcc $nvcc_v}"
        echo "sanitizer=${san_v:-absent}"
        echo "python=$("$PY" -c 'import platform; print(platform.python_version())' 2>/dev/null)"
        echo "budget=$BUDGET"
        echo "device=${DEVICE:-cuda}"
        echo "cuda_home=${CUDA_HOME:-}"
        echo "nproc=$NPROC"
        echo "report=$REPORT"
        echo "work=$WORK"
    } >"$WORK/meta.txt"
    cat "$WORK/meta.txt"
}

# the helpers that steps run through `timeout` (in a child bash) need
export -f write_meta find_sanitizer log
export PY DRY BUDGET NPROC REPORT WORK ROOT DEVICE

# ============================================================================ dry run

dry_run() {
    log "gpu_check --dry-run: report $REPORT, work $WORK, budget ${BUDGET}s"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    guarded env write_meta

    guarded syntax bash -c 'bash -n "$1" && bash -n "$2" && echo "bash syntax ok"' _ "$ROOT/scripts/gpu_check.sh" \
        "$ROOT/scripts/gpu_wheels.sh"

    # the tools the real run calls; those only the GPU machine has are reported, not required
    guarded tools bash -c '
        miss=0
        for c in timeout tar awk sed nproc date mktemp readlink "$1"; do
            command -v "$c" >/dev/null || { echo "missing: $c"; miss=1; }
        done
        for c in nvcc nvidia-smi compute-sanitizer; do
            echo "$c: $(command -v "$c" || echo "absent here (the GPU machine has it)")"
        done
        "$1" -c "
import importlib, sys
need = [\"torch\", \"numpy\", \"pytest\", \"pytest_benchmark\", \"setuptools\", \"matplotlib\", \"tqdm\", \"nibabel\"]
optional = [\"xdist\", \"monai\", \"neurite\", \"voxelmorph\", \"fused_lncc\", \"fireants\", \"ninja\"]
bad = []
for m in need + optional:
    try:
        importlib.import_module(m)
        print(m, \"ok\")
    except Exception as e:
        print(m, \"MISSING\" if m in need else \"absent (optional)\", type(e).__name__)
        bad += [m] if m in need else []
sys.exit(1 if bad else 0)
" || miss=1
        exit $miss' _ "$PY"

    guarded --note "the wheel list, and .whl/ when present" wheels bash "$ROOT/scripts/gpu_wheels.sh" --check

    # the build's options exist (the dry run never compiles: it assumes fastwarp is built)
    guarded --note "setup.py build_ext takes --inplace --build-temp --build-lib" build bash -c '
        out=$(FASTWARP_CUDA=0 "$1" setup.py build_ext --help 2>&1) || { echo "$out"; exit 1; }
        for o in --inplace --build-temp --build-lib; do
            grep -q -- "$o" <<<"$out" || { echo "build_ext lacks $o"; exit 1; }
        done
        echo "build_ext options ok"' _ "$PY"

    guarded import "$PY" -c '
import fastwarp, os, sys
root = sys.argv[1]
assert os.path.realpath(fastwarp.__file__).startswith(os.path.realpath(root)), fastwarp.__file__
print("fastwarp", fastwarp.__version__, "from", fastwarp.__file__, "CUDA kernels:", fastwarp.has_cuda_kernels())
' "$ROOT" || log "    (build it first: pip install --no-build-isolation -e .)"

    # the exact argument lists of the real run, through the real parsers
    train_argv fp32 cuda "$TRAIN_EPOCHS" "$TRAIN_STEPS" "$WORK/train_fp32" && save_argv train_fp32
    train_argv bf16 cuda "$TRAIN_EPOCHS" "$TRAIN_STEPS" "$WORK/train_bf16" && save_argv train_bf16
    register_argv "$WORK/train_fp32/checkpoint.pt" cuda "$WORK/register" && save_argv register
    bench_argv cuda full && save_argv bench
    # (steps read no stdin: the checker is a file)
    cat >"$WORK/check_argv.py" <<'EOF'
import os, sys
from fastwarp.app.bench.runner import build_parser as bench_parser
from fastwarp.app.cli import register_parser, train_parser

folder = sys.argv[1]
parsers = {"train": train_parser, "register": register_parser, "bench": bench_parser}
checked = 0
for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name)) as f:
        argv = f.read().splitlines()
    command, args = argv[0], argv[1:]
    parsed = parsers[command]().parse_args(args)  # exits 2 on an unknown or bad argument
    for attr in ("moving", "fixed", "labels", "fixed_labels"):
        path = getattr(parsed, attr, None)
        assert path is None or os.path.exists(path), f"{name}: {attr} {path} does not exist"
    print(f"{name}: fastwarp {command} accepts {len(args)} arguments")
    checked += 1
assert checked == 4, f"{checked} argument lists checked, expected 4"
EOF
    guarded --note "train fp32/bf16, register, bench: the real run's argument lists" argv \
        "$PY" "$WORK/check_argv.py" "$WORK/argv"

    # pytest collects every selection the real run makes, with its options (in parallel)
    local t pids=()
    t=$(budget collect)
    if ((t == 0)); then
        skipped collect "out of time"
    else
        run_step --count-note collect_tests "$t" "${PYTEST[@]}" "${TESTS_ARGS[@]}" --collect-only &
        pids+=($!)
        run_step --count-note collect_tests_large "$t" "${PYTEST[@]}" "${LARGE_ARGS[@]}" --collect-only &
        pids+=($!)
        run_step --count-note --empty-ok collect_sanitize "$t" "${PYTEST[@]}" "${SANITIZE_ARGS[@]}" --collect-only &
        pids+=($!)
        run_step --count-note collect_bench_fused "$t" "${PYTEST[@]}" "${FUSED_ARGS[@]}" --collect-only &
        pids+=($!)
        wait "${pids[@]}"
    fi

    # the real command lines, on the CPU at tiny sizes
    bench_argv cpu tiny --cases warp,ncc --repeats 1
    guarded bench "$PY" -m fastwarp "${ARGV[@]}"
    train_argv fp32 cpu 1 1 "$WORK/train_fp32" --enc 4 8 --dec 8 8 4 --workers 0
    guarded train_fp32 "$PY" -m fastwarp "${ARGV[@]}"
    register_argv "$WORK/train_fp32/checkpoint.pt" cpu "$WORK/register"
    guarded register "$PY" -m fastwarp "${ARGV[@]}"

    guarded summary "$PY" "$ROOT/scripts/gpu_summary.py" --selftest
}

# ============================================================================ real run

real_run() {
    log "gpu_check: report $REPORT, work $WORK, budget ${BUDGET}s, $NPROC CPUs"
    # the carried wheels go first on the path; the repository is importable as is
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    # the toolkit, for the sdists' builds (fastwarp's setup.py finds it on its own)
    if CUDA_HOME=$(find_cuda_home); then export CUDA_HOME; else unset CUDA_HOME; fi
    guarded env write_meta

    local wheels=("$ROOT"/.whl/*.whl)
    if [[ -e ${wheels[0]} ]]; then
        guarded --note "${#wheels[@]} wheels into $SITE" wheels "$PY" -m pip install -q --no-index --no-deps \
            --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
    else
        record wheels ok 0 0 - "no .whl/ carried: baselines absent, nibabel must be there"
    fi

    # sdists (fused_lncc): compiled in the background, into the same site folder, sm_90
    local sdists=("$ROOT"/.whl/src/*.tar.gz) sdist_pid=""
    if [[ -e ${sdists[0]} ]]; then
        local st
        st=$(budget build)
        ((st > 240)) && st=240
        (
            export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$NPROC
            run_step --note "${#sdists[@]} sdists into $SITE, in the background" sdist "$st" \
                nice -n 10 "$PY" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir \
                --target "$SITE" "${sdists[@]}"
        ) &
        sdist_pid=$!
    fi

    mkdir -p "$WORK/build-temp" "$WORK/build-lib"
    guarded --note "sm_90, MAX_JOBS=$NPROC" build env FASTWARP_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$NPROC" \
        "$PY" setup.py build_ext --inplace --build-temp "$WORK/build-temp" --build-lib "$WORK/build-lib"
    if ! step_ok build; then
        local s
        for s in import tests memcheck racecheck synccheck tests_large bench bench_fused train_fp32 train_bf16 register; do
            skipped "$s" "the build failed"
        done
        [[ -n $sdist_pid ]] && wait "$sdist_pid"
        return
    fi
    finalize

    guarded import "$PY" -c '
import os, sys, torch, fastwarp
root, device = sys.argv[1], sys.argv[2]
assert os.path.realpath(fastwarp.__file__).startswith(os.path.realpath(root)), f"imported {fastwarp.__file__}, not {root}"
assert fastwarp.has_cuda_kernels(), "fastwarp was built without CUDA kernels"
assert device != "cuda" or torch.cuda.is_available(), "torch sees no GPU"
x = torch.rand(1, 2, 5, 6, 7, device=device)
d = torch.zeros(1, 3, 5, 6, 7, device=device)
assert torch.equal(fastwarp.warp(x, d), x), "the identity warp changed the image"
if device == "cuda":
    torch.cuda.synchronize()
print("fastwarp", fastwarp.__version__, "from", fastwarp.__file__, "on",
      torch.cuda.get_device_name() if device == "cuda" else device)
' "$ROOT" "$DEVICE"
    if ! step_ok import; then
        local s
        for s in tests memcheck racecheck synccheck tests_large bench bench_fused train_fp32 train_bf16 register; do
            skipped "$s" "fastwarp does not import or sees no GPU"
        done
        [[ -n $sdist_pid ]] && wait "$sdist_pid"
        return
    fi

    # tests and the sanitizers side by side (correctness only; nothing here is timed)
    local t xdist=() san pids=() tool
    t=$(budget group)
    if ((t == 0)); then
        for s in tests memcheck racecheck synccheck; do skipped "$s" "out of time"; done
    else
        local n=${GPU_CHECK_XDIST:-4}
        if ((n > 0)) && "$PY" -c "import xdist" 2>/dev/null; then xdist=(-n "$n"); fi
        run_step --note "${xdist[*]:-serial}" tests "$t" "${PYTEST[@]}" "${TESTS_ARGS[@]}" "${xdist[@]}" &
        pids+=($!)
        if san=$(find_sanitizer); then
            # each sanitizer is time-boxed: a box that ran out with no error report is PARTIAL
            local st=$((t > SANITIZER_CAP ? SANITIZER_CAP : t))
            for tool in memcheck racecheck synccheck; do
                local envs=()
                [[ $tool == memcheck ]] && envs=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
                run_step --sanitizer "$tool" "$st" env "${envs[@]}" "$san" --tool "$tool" --error-exitcode 1 \
                    --target-processes all --print-limit 100 "${SAN_PYTEST[@]}" "${SANITIZE_ARGS[@]}" &
                pids+=($!)
            done
        else
            for tool in memcheck racecheck synccheck; do
                record "$tool" FAILED - 0 - "compute-sanitizer not found"
            done
        fi
        wait "${pids[@]}"
    fi
    finalize

    guarded tests_large "${PYTEST[@]}" "${LARGE_ARGS[@]}"
    finalize

    if [[ -n $sdist_pid ]]; then
        log "waiting for the sdist build"
        wait "$sdist_pid"
    fi
    bench_argv "$DEVICE" full "${BENCH_EXTRA[@]}"
    guarded bench "$PY" -m fastwarp "${ARGV[@]}"
    guarded bench_fused "${PYTEST[@]}" "${FUSED_ARGS[@]}"
    finalize

    train_argv fp32 "$DEVICE" "$TRAIN_EPOCHS" "$TRAIN_STEPS" "$WORK/train_fp32" "${TRAIN_EXTRA[@]}"
    guarded --note "$TRAIN_EPOCHS x $TRAIN_STEPS steps" train_fp32 "$PY" -m fastwarp "${ARGV[@]}"
    # the bf16 run: as many steps per epoch as fit its time, at the fp32 run's rate
    local bt steps
    bt=$(budget train_bf16)
    steps=$("$PY" - "$WORK/train_fp32" "$WORK/logs/train_fp32.log" "$bt" "$TRAIN_EPOCHS" "$TRAIN_STEPS" <<'EOF' 2>/dev/null
import json, os, re, sys
folder, logf, avail, epochs, steps = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
try:
    log = json.load(open(os.path.join(folder, "log.json")))
    train_s = sum(e["time_s"] for e in log["epochs"])
    rate = log["epochs"][-1]["step"] / train_s
    wall = float(re.findall(r"after ([0-9.]+)s", open(logf).read())[-1])
    overhead = max(0.0, wall - train_s)
    fit = int(0.8 * rate * (avail - overhead - 10) / epochs)
    print(min(steps, max(20, fit)))
except Exception:
    print(steps)
EOF
)
    train_argv bf16 "$DEVICE" "$TRAIN_EPOCHS" "${steps:-$TRAIN_STEPS}" "$WORK/train_bf16" "${TRAIN_EXTRA[@]}"
    guarded --note "$TRAIN_EPOCHS x ${steps:-$TRAIN_STEPS} steps" train_bf16 "$PY" -m fastwarp "${ARGV[@]}"

    local ckpt=$WORK/train_fp32/checkpoint.pt
    [[ -f $ckpt ]] || ckpt=$WORK/train_bf16/checkpoint.pt
    if [[ -f $ckpt ]]; then
        register_argv "$ckpt" "$DEVICE" "$WORK/register"
        guarded --note "model $(basename "$(dirname "$ckpt")")" register "$PY" -m fastwarp "${ARGV[@]}"
        cp -f "$WORK/register/colin27_to_mni152.png" "$REPORT/registration.png" 2>/dev/null
    else
        skipped register "no checkpoint (both trainings failed)"
    fi
}

# ============================================================================ main

if ((DRY)); then dry_run; else real_run; fi
finalize
if ((DRY)); then
    # REPORT_DIR has what the real run leaves there, within the device tool's limits
    expected=(summary.txt summary.json logs.tar.gz bench.json bench.md)
    missing=()
    for f in "${expected[@]}"; do [[ -s $REPORT/$f ]] || missing+=("$f"); done
    nfiles=$(find "$REPORT" -type f | wc -l)
    deep=$(find "$REPORT" -mindepth 2 -type f | wc -l)
    if ((${#missing[@]} || nfiles > 8 || deep)); then
        record outputs FAILED 1 0 - "missing: ${missing[*]:-none}; $nfiles files, $deep in subfolders"
    else
        record outputs ok 0 0 - "$nfiles files in REPORT_DIR: ${expected[*]}"
    fi
    finalize
fi
echo
echo "================================================================ gpu_check summary"
cat "$REPORT/summary.txt"
# the verdict is the summary's (a failed step, or on the GPU a test run where nothing passed);
# the steps' records alone when the summary could not be written
if [[ -s $REPORT/summary.json ]]; then
    grep -q '"result": "pass"' "$REPORT/summary.json" || exit 1
elif failed_any; then
    exit 1
fi
exit 0
