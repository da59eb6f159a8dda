"""Build and load the C++/CUDA kernels in `csrc/` (JIT through `torch.utils.cpp_extension`, cached).

The library registers the `marn::` ops (schemas, CPU and, where built, CUDA kernels). It is built
once per source/flag change into `$MARN_BUILD_DIR` (default `<project>/.build`). CUDA kernels are
compiled wherever the torch build has CUDA and a toolkit (nvcc) is found, even without a GPU, so a
CPU-only machine still checks that the `.cu` sources compile. A build that fails leaves the
callers on the plain-PyTorch reference after one warning saying why.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CSRC = PROJECT_ROOT / "csrc"
BUILD_DIR_ENV = "MARN_BUILD_DIR"
CPU_SOURCES = ("schema.cpp", "apgru.cpp", "embedding.cpp")
CUDA_SOURCES = ("cuda_ops.cpp", "apgru_kernels.cu", "embedding_kernels.cu")
# Without a visible GPU torch cannot pick an architecture; Hopper is the GPU this project is lent.
FALLBACK_CUDA_ARCH = "-gencode=arch=compute_90,code=sm_90"
ERROR_LINES = 15


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    has_cuda: bool
    library: Path | None
    problem: str | None  # why nothing loaded, or why the CUDA kernels are missing


def build_root() -> Path:
    return Path(os.environ.get(BUILD_DIR_ENV) or PROJECT_ROOT / ".build")


def cuda_toolkit() -> Path | None:
    """The CUDA toolkit to compile with: $CUDA_HOME/$CUDA_PATH, else the one nvcc on PATH runs.

    A wrapper script as `nvcc` (e.g. /usr/local/bin/nvcc) would make torch guess its parent
    folder, which holds no CUDA runtime, so candidates must hold bin/nvcc and the runtime headers.
    """
    if torch.version.cuda is None:
        return None
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    candidates.append("/usr/local/cuda")
    for candidate in filter(None, candidates):
        home = Path(candidate)
        if (home / "bin" / "nvcc").is_file() and (home / "include" / "cuda_runtime.h").is_file():
            return home
    return None


def cpu_capability_flags() -> list[str]:
    """Compile the CPU kernels for the vector instruction set torch itself dispatches to here.

    AVX-512 machines get AVX2 code: the kernels are memory-bound and AVX2 runs everywhere that
    AVX-512 does. Without AVX2 the portable vector code is used.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        return ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def _cuda_include_dirs() -> list[str]:
    """ATen's CUDA headers include cuBLAS/cuSPARSE headers that pip wheels ship outside the toolkit."""
    import nvidia  # noqa: PLC0415 - only present with the CUDA build of torch

    return [str(Path(p) / "cu13" / "include") for p in nvidia.__path__ if (Path(p) / "cu13" / "include").is_dir()]


def _compile_and_load(with_cuda: bool) -> Path:
    from torch.utils import cpp_extension  # noqa: PLC0415 - reads CUDA_HOME when imported

    cpu_flags = cpu_capability_flags()
    tag = cpu_flags[0].split("=")[1].lower()
    name = f"marn_ops_{'cuda' if with_cuda else 'cpu'}_{tag}"
    directory = build_root() / name
    directory.mkdir(parents=True, exist_ok=True)
    sources = [str(CSRC / s) for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
    cuda_flags = ["-O3"]
    include_dirs = [str(CSRC)]
    if with_cuda:
        cpp_extension.CUDA_HOME = str(cuda_toolkit())  # torch's own guess trips over nvcc wrappers
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            cuda_flags.append(FALLBACK_CUDA_ARCH)
        include_dirs += _cuda_include_dirs()
    cpp_extension.load(
        name=name,
        sources=sources,
        extra_cflags=["-O3", "-fopenmp", *cpu_flags],
        extra_cuda_cflags=cuda_flags,
        extra_ldflags=["-fopenmp"],
        extra_include_paths=include_dirs,
        build_directory=str(directory),
        is_python_module=False,
        verbose=False,
    )
    return directory / f"{name}.so"


def _short_reason(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return "\n".join((errors or lines)[-ERROR_LINES:]) or type(err).__name__


@functools.cache
def load() -> ExtensionStatus:
    """Build (or reuse) and load the library once per process; warn once if it cannot be built."""
    cuda_problem = None
    if cuda_toolkit() is not None:
        try:
            return ExtensionStatus(True, True, _compile_and_load(with_cuda=True), None)
        except Exception as err:  # a compiler error arrives as RuntimeError or CalledProcessError
            cuda_problem = f"the CUDA kernels failed to build: {_short_reason(err)}"
    elif torch.version.cuda is not None:
        cuda_problem = "no CUDA toolkit found (set CUDA_HOME to a folder holding bin/nvcc)"
    try:
        library = _compile_and_load(with_cuda=False)
    except Exception as err:
        problem = f"the C++ kernels failed to build: {_short_reason(err)}"
        if cuda_problem is not None and "failed to build" in cuda_problem:
            problem = f"{cuda_problem}\nand {problem}"
        warnings.warn(
            f"marn.ops: {problem}\nThe plain-PyTorch reference ops run instead "
            f"(build folder: {build_root()}).",
            RuntimeWarning,
            stacklevel=2,
        )
        return ExtensionStatus(False, False, None, problem)
    if cuda_problem is not None and "failed to build" in cuda_problem:
        warnings.warn(f"marn.ops: {cuda_problem}\nOnly the CPU kernels are loaded.", RuntimeWarning, stacklevel=2)
    return ExtensionStatus(True, False, library, cuda_problem)
