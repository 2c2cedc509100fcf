"""Builds fastwarp._C: CPU kernels always, CUDA kernels when a toolkit and a CUDA build of
torch are present (FASTWARP_CUDA=1 forces them, FASTWARP_CUDA=0 leaves them out).

The test build of the CUDA code, FASTWARP_CUDA_EMU=1, adds fastwarp._C_emu: the CUDA
sources compiled by the host compiler over an emulated launch on CPU threads
(csrc/emu/README.md). FASTWARP_CUDA_EMU=thread or address (or a comma-separated list such
as 1,thread,address) builds it under ThreadSanitizer / AddressSanitizer as
fastwarp._C_emu_thread / fastwarp._C_emu_address, and FASTWARP_CUDA_EMU=count builds
fastwarp._C_emu_count with clang (FASTWARP_CLANG, default clang++): every load and store
counted as a GPU would see it (Note [Counting the emulated launch], csrc/emu/count.h). A
normal install builds none of them.

Install with `pip install --no-build-isolation .` after installing torch: the extension is
compiled against the torch that is installed, and build isolation would compile it
against whatever torch pip downloads into a temporary environment instead.
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"fastwarp build: {msg}", file=sys.stderr, flush=True)


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) and (
        os.path.isfile(os.path.join(path, "bin", "nvcc"))
    )


def find_cuda_home():
    """The CUDA toolkit root, or None.

    CUDA_HOME / CUDA_PATH when they point at a toolkit; else the toolkit that the `nvcc`
    on PATH belongs to (following symlinks, and looking past wrapper scripts such as
    /usr/local/bin/nvcc, whose parent is not a toolkit); else the usual install places.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit(os.environ.get(var)):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates.append(os.path.dirname(os.path.dirname(real)))
        try:  # a wrapper script: look for the toolkit path it executes
            with open(real, "rb") as f:
                head = f.read(4096).decode("utf-8", "ignore")
            for word in head.replace('"', " ").replace("'", " ").split():
                if word.endswith("/bin/nvcc"):
                    candidates.append(os.path.dirname(os.path.dirname(word)))
        except OSError:
            pass
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    candidates += ["/opt/cuda"]
    for c in candidates:
        if _is_toolkit(c):
            return c
    return None


def want_cuda(torch_cuda_version, cuda_home):
    flag = os.environ.get("FASTWARP_CUDA", "").strip()
    if flag == "0":
        log("FASTWARP_CUDA=0: building the CPU kernels only")
        return False
    if flag == "1":
        if cuda_home is None:
            sys.exit("fastwarp build: FASTWARP_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)")
        if torch_cuda_version is None:
            sys.exit("fastwarp build: FASTWARP_CUDA=1 but the installed torch is a CPU-only build")
        return True
    if cuda_home is None:
        log("no CUDA toolkit (nvcc) found: building the CPU kernels only")
        return False
    if torch_cuda_version is None:
        log(f"CUDA toolkit at {cuda_home}, but torch is a CPU-only build: CPU kernels only")
        return False
    return True


def cuda_arch_list(torch):
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        log(f"CUDA architectures from TORCH_CUDA_ARCH_LIST: {os.environ['TORCH_CUDA_ARCH_LIST']}")
        return
    if torch.cuda.is_available():
        archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
        log(f"CUDA architectures from the visible GPUs: {os.environ['TORCH_CUDA_ARCH_LIST']}")
        return
    os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;8.6;9.0;10.0;12.0+PTX"
    log(f"no GPU visible and TORCH_CUDA_ARCH_LIST unset: default {os.environ['TORCH_CUDA_ARCH_LIST']}")


def extensions():
    import torch

    cuda_home = find_cuda_home()
    use_cuda = want_cuda(torch.version.cuda, cuda_home)
    if use_cuda:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))]
    sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))]
    # at::parallel_for's OpenMP backend is inline code compiled into this extension:
    # without -fopenmp it would silently run on one thread.
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    # -ffp-contract=off: no fused multiply-add in the CPU code, so that its vector and scalar
    # paths round alike (Note [Vectorized CPU sampling]).
    extra = {"cxx": ["-O3", "-ffp-contract=off"] + openmp}
    if use_cuda:
        cuda_arch_list(torch)
        sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))]
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "--extended-lambda", "-lineinfo"]
        log(f"building CPU and CUDA kernels with the toolkit at {cuda_home} (torch CUDA {torch.version.cuda})")
        ext = CUDAExtension("fastwarp._C", sources, extra_compile_args=extra, extra_link_args=openmp)
    else:
        ext = CppExtension("fastwarp._C", sources, extra_compile_args=extra, extra_link_args=openmp)
    return [ext], {"build_ext": build_ext_class(BuildExtension)}


def build_ext_class(BuildExtension):
    """torch's BuildExtension (ninja), compiling an extension with its own C++ compiler
    where it names one (`ext.cxx`): the counting build is clang's, the rest the default."""

    class Build(BuildExtension):
        def build_extension(self, ext):
            cxx = getattr(ext, "cxx", None)
            if cxx is None:
                return super().build_extension(ext)
            saved = os.environ.get("CXX")
            os.environ["CXX"] = cxx  # what torch's ninja compile reads
            try:
                return super().build_extension(ext)
            finally:
                if saved is None:
                    del os.environ["CXX"]
                else:
                    os.environ["CXX"] = saved

    return Build.with_options(use_ninja=True)


# The emulated-CUDA test builds: module suffix -> extra compile flags.
EMU_VARIANTS = {
    "1": ("_C_emu", ["-O2"]),
    "thread": ("_C_emu_thread", ["-O1", "-g", "-fsanitize=thread"]),
    "address": ("_C_emu_address", ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]),
    # clang: the trace callbacks need a coverage kind beside them; no vectorizing, so that
    # each CUDA thread's access stays the scalar access the kernel wrote.
    "count": ("_C_emu_count", ["-O2", "-fsanitize-coverage=inline-8bit-counters,trace-loads,trace-stores",
                               "-fno-vectorize", "-fno-slp-vectorize", "-DFASTWARP_EMU_COUNT=1"]),
}
# The variants that need clang, and the variable that names it.
CLANG_VARIANTS = {"count"}


def emu_extensions():
    requested = [v.strip() for v in os.environ.get("FASTWARP_CUDA_EMU", "").split(",") if v.strip()]
    requested = [v for v in requested if v != "0"]
    unknown = [v for v in requested if v not in EMU_VARIANTS]
    if unknown:
        sys.exit(f"fastwarp build: FASTWARP_CUDA_EMU must be a comma-separated list of {', '.join(EMU_VARIANTS)}, got {unknown}")
    if not requested:
        return []
    from torch.utils.cpp_extension import CppExtension

    sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "emu", "*.cpp")))]
    exts = []
    for variant in requested:
        module, flags = EMU_VARIANTS[variant]
        log(f"building the emulated-CUDA test extension fastwarp.{module}")
        defines = ["-DFASTWARP_CUDA_EMU=1", f"-DFASTWARP_EMU_MODULE={module}"]
        link = [f for f in flags if f.startswith("-fsanitize") and "coverage" not in f]
        ext = CppExtension(f"fastwarp.{module}", sources, extra_compile_args={"cxx": flags + defines}, extra_link_args=link)
        if variant in CLANG_VARIANTS:
            ext.cxx = os.environ.get("FASTWARP_CLANG", "clang++")
            if shutil.which(ext.cxx) is None:
                sys.exit(f"fastwarp build: FASTWARP_CUDA_EMU={variant} needs clang ({ext.cxx} not found: "
                         "apt-get install clang, or set FASTWARP_CLANG)")
        exts.append(ext)
    return exts


ext_modules, cmdclass = extensions()
ext_modules += emu_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
