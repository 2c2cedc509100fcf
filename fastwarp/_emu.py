"""The emulated-CUDA test build: fastwarp's CUDA kernels, run on the CPU.

``FASTWARP_CUDA_EMU=1 pip install --no-build-isolation -e .`` adds the extension
``fastwarp._C_emu``: the files of ``csrc/cuda/`` compiled by the host compiler over an
emulated CUDA launch (``csrc/emu/cuda_emu.h``), registered as the CPU kernels of
``fastwarp_emu::`` ops, twins of the ``fastwarp::`` ops with the same schemas.

Inside ``with EmulatedCuda():`` every ``fastwarp::`` op called on CPU tensors runs on those
kernels instead of the CPU ones, under the public API, its checks and its autograd, so the
tests of the CUDA backend are the CPU tests with a different device parameter
(``tests/conftest.py``). Private: for tests and checks, not for users.

The sanitizer builds ``_C_emu_thread`` / ``_C_emu_address`` are chosen with the
environment variable ``FASTWARP_CUDA_EMU_VARIANT=thread|address``; they load only in a
process that has the sanitizer runtime preloaded. ``python -m fastwarp._emu thread -- CMD``
runs CMD so (see ``sanitizer_env``; ``scripts/emu_sanitize.sh`` runs the tests that way).

The counting build ``_C_emu_count`` (``FASTWARP_CUDA_EMU_VARIANT=count``) runs the same
kernels with every load and store counted as a GPU would see it; ``counting()`` returns
the counts of each launch (Note [Counting the emulated launch], ``csrc/emu/count.h``).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import _ops

VARIANT_ENV = "FASTWARP_CUDA_EMU_VARIANT"
MODULES = {"": "_C_emu", "thread": "_C_emu_thread", "address": "_C_emu_address", "count": "_C_emu_count"}

_loaded: str | None = None
_active = 0


def variant() -> str:
    """The build to load: '' (plain), 'thread', 'address' or 'count', from
    FASTWARP_CUDA_EMU_VARIANT."""
    v = os.environ.get(VARIANT_ENV, "")
    if v not in MODULES:
        raise ValueError(f"{VARIANT_ENV} must be one of {', '.join(map(repr, MODULES))}, got {v!r}")
    return v


def load() -> str:
    """Imports the emulated-CUDA extension (once) and registers fake kernels and autograd
    for its ops. Returns the module name; raises ImportError when it was not built."""
    global _loaded
    name = MODULES[variant()]
    if _loaded is not None:
        if _loaded != name:
            raise ImportError(f"fastwarp.{_loaded} is already loaded; one emulated build per process")
        return name
    try:
        importlib.import_module(f"fastwarp.{name}")
    except ImportError as e:
        raise ImportError(
            f"fastwarp.{name} is not built ({e}); build the test extension with "
            f"FASTWARP_CUDA_EMU={variant() or 1} pip install --no-build-isolation -e ."
        ) from e
    _ops.register("fastwarp_emu")
    _loaded = name
    return name


def available() -> bool:
    """Whether the emulated-CUDA extension of the selected variant can be loaded."""
    try:
        load()
    except ImportError:
        return False
    return True


def built(variant: str) -> bool:
    """Whether the build of ``variant`` ('', 'thread', 'address') is installed."""
    return importlib.util.find_spec(f"fastwarp.{MODULES[variant]}") is not None


# The sanitizer runtimes and their options. halt_on_error: the first report fails the
# process; OMP_NUM_THREADS=1 keeps torch's OpenMP threads (whose synchronization inside
# libgomp ThreadSanitizer cannot see) out of the run; the emulation itself runs on the
# calling thread.
SANITIZERS = {
    "thread": ("libtsan.so", "TSAN_OPTIONS", "halt_on_error=1 exitcode=66 second_deadlock_stack=1"),
    "address": ("libasan.so", "ASAN_OPTIONS", "halt_on_error=1 detect_leaks=0 exitcode=1"),
}


def sanitizer_env(variant: str, env: dict | None = None) -> dict:
    """The environment of a process that runs the ``variant`` ('thread' or 'address') build:
    the compiler's sanitizer runtime preloaded (found with ``$CXX -print-file-name``, the
    compiler that built the extension), its options, and the variant selected."""
    library, options_var, options = SANITIZERS[variant]
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"{cxx} not found: it locates the sanitizer runtime {library}")
    runtime = subprocess.run([cxx, f"-print-file-name={library}"], capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.isabs(runtime):
        raise RuntimeError(f"{cxx} has no {library} (install the compiler's sanitizer runtime)")
    env = dict(os.environ if env is None else env)
    env.update({"LD_PRELOAD": runtime, VARIANT_ENV: variant, "OMP_NUM_THREADS": "1"})
    env[options_var] = f"{options} {env.get(options_var, '')}".strip()
    return env


def active() -> bool:
    """Whether an EmulatedCuda mode is active: entered and not yet exited, in any thread (a
    process-wide count; the tests enter it on the main thread only)."""
    return _active > 0


class EmulatedCuda(TorchDispatchMode):
    """Runs every ``fastwarp::`` op on the emulated CUDA kernels (``fastwarp_emu::``).

    ``calls`` counts the ops redirected, by name, so that a test can tell that the CUDA
    code really ran.
    """

    def __init__(self):
        super().__init__()
        load()
        self.calls: collections.Counter[str] = collections.Counter()

    def __enter__(self):
        global _active
        _active += 1
        return super().__enter__()

    def __exit__(self, *exc):
        global _active
        _active -= 1
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "fastwarp":
            twin = getattr(getattr(torch.ops.fastwarp_emu, func._opname), func._overloadname)
            self.calls[func._opname] += 1
            return twin(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def counting(block_stride: int = 1, block_run: int = 32):
    """Counts the memory traffic of every emulated kernel launch in the block.

    Needs the counting build, selected with ``FASTWARP_CUDA_EMU_VARIANT=count`` (one build
    per process). Yields a list that holds, on exit, one dict per launch: the fields of
    Note [Counting the emulated launch] (``csrc/emu/count.h``), and ``kernel``, the
    kernel's name with its template arguments. With ``block_stride`` s > 1 only every s-th
    run of ``block_run`` consecutive blocks runs (the outputs are then garbage) and
    ``blocks_run`` says how many did.
    """
    if variant() != "count":
        raise RuntimeError(f"counting needs the counting build: set {VARIANT_ENV}=count before fastwarp loads it")
    load()
    launches: list[dict] = []
    torch.ops.fastwarp_emu_count.begin(block_stride, block_run)
    try:
        yield launches
    finally:
        for launch in json.loads(torch.ops.fastwarp_emu_count.end()):
            launch["kernel"] = _symbols(launch["module"]).get(launch["kernel_offset"], hex(launch["kernel_offset"]))
            launches.append(launch)


@functools.cache
def _symbols(module: str) -> dict[int, str]:
    """The function symbols of a shared object (local ones included, which the dynamic
    loader cannot name: the kernels live in anonymous namespaces), address -> short name."""
    nm = subprocess.run(["nm", "-C", "--defined-only", module], capture_output=True, text=True, check=True).stdout
    names = {}
    for line in nm.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW" and "_kernel" in parts[2]:
            names[int(parts[0], 16)] = _short_name(parts[2])
    return names


def _short_name(demangled: str) -> str:
    """'void ns::(anonymous namespace)::k<float, 3>(args)' -> 'k<float, 3>'."""
    depth, start, end = 0, 0, len(demangled)
    if demangled.startswith("void "):
        start = 5
    for i in range(start, len(demangled)):
        c = demangled[i]
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0 and not demangled.startswith("(anonymous", i):
            end = i
            break
        elif c == ":" and depth == 0 and demangled[i - 1] == ":":
            start = i + 1
    return demangled[start:end]


def main(argv=None):
    """``python -m fastwarp._emu thread|address -- CMD [ARGS...]``: runs CMD under the
    sanitizer build."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[0] not in SANITIZERS or argv[1] != "--":
        sys.exit("usage: python -m fastwarp._emu thread|address -- CMD [ARGS...]")
    if not built(argv[0]):
        sys.exit(f"fastwarp.{MODULES[argv[0]]} is not built: FASTWARP_CUDA_EMU=1,{argv[0]} pip install --no-build-isolation -e .")
    env = sanitizer_env(argv[0])
    os.execvpe(argv[2], argv[2:], env)


if __name__ == "__main__":
    main()
