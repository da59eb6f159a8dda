"""Build and load the C++/CUDA kernels in `csrc/` (JIT through `torch.utils.cpp_extension`, cached).

The library registers the `marn::` ops (schemas, CPU and, where built, CUDA kernels). It is built
once per source/flag change into `$MARN_BUILD_DIR` (default `<project>/.build`). CUDA kernels are
compiled where a GPU is visible (or with MARN_BUILD_CUDA=1, which the tests set to check that the
`.cu` sources compile on a machine without one). A build that fails leaves the
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
BUILD_CUDA_ENV = "MARN_BUILD_CUDA"
CPU_SOURCES = ("schema.cpp", "apgru.cpp", "embedding.cpp")
CUDA_SOURCES = ("cuda_ops.cpp", "apgru_kernels.cu", "embedding_kernels.cu")
# Without a visible GPU torch cannot pick an architecture; Hopper is the GPU this project is lent.
FALLBACK_CUDA_ARCH = "-gencode=arch=compute_90,code=sm_90"
ERROR_LINES = 15


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    has_cuda: bool
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

    AVX-512 machines get AVX2 code too (whether AVX-512 would pay for these kernels is unmeasured);
    without AVX2 the portable vector code is used.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("AVX2", "AVX512"):
        return ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def _compile_and_load(with_cuda: bool) -> None:
    toolkit = cuda_toolkit()
    if toolkit is not None:
        os.environ.setdefault("CUDA_HOME", str(toolkit))  # read when cpp_extension is first imported
    from torch.utils import cpp_extension  # noqa: PLC0415

    cpu_flags = cpu_capability_flags()
    tag = cpu_flags[0].split("=")[1].lower()
    name = f"marn_ops_{'cuda' if with_cuda else 'cpu'}_{tag}"
    directory = build_root() / name
    directory.mkdir(parents=True, exist_ok=True)
    sources = [str(CSRC / s) for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
    cuda_flags = ["-O3"]
    if with_cuda:
        cpp_extension.CUDA_HOME = str(toolkit)  # torch's own guess trips over nvcc wrappers
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            cuda_flags.append(FALLBACK_CUDA_ARCH)
    cpp_extension.load(
        name=name,
        sources=sources,
        extra_cflags=["-O3", "-fopenmp", *cpu_flags],
        extra_cuda_cflags=cuda_flags,
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(CSRC)],
        build_directory=str(directory),
        is_python_module=False,
        verbose=False,
    )


def _build(with_cuda: bool) -> str | None:
    """Build and load; None on success, else a short reason (the full log goes to the build folder)."""
    try:
        _compile_and_load(with_cuda)
        return None
    except Exception as err:  # a compiler error arrives as RuntimeError or CalledProcessError
        lines = [line for line in str(err).splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        reason = "\n".join((errors or lines)[-ERROR_LINES:]) or type(err).__name__
        log = build_root() / f"build_error_{'cuda' if with_cuda else 'cpu'}.log"
        try:
            log.write_text(str(err))
        except OSError:
            return reason
        return f"{reason}\n(full log: {log})"


def cuda_wanted() -> bool:
    """CUDA kernels are built where a GPU can run them, or with MARN_BUILD_CUDA=1 to check that they compile."""
    return torch.cuda.is_available() or os.environ.get(BUILD_CUDA_ENV) == "1"


@functools.cache
def load() -> ExtensionStatus:
    """Build (or reuse) and load the library once per process; warn once if it cannot be built."""
    cuda_failure = missing_cuda = None
    if not cuda_wanted():
        missing_cuda = f"no GPU visible, so no CUDA kernels built ({BUILD_CUDA_ENV}=1 builds them anyway)"
    elif cuda_toolkit() is None:
        missing_cuda = "no CUDA toolkit found (set CUDA_HOME to a folder holding bin/nvcc)"
    else:
        cuda_failure = _build(with_cuda=True)
        if cuda_failure is None:
            return ExtensionStatus(True, True, None)
        cuda_failure = f"the CUDA kernels failed to build: {cuda_failure}"
    cpu_failure = _build(with_cuda=False)
    if cpu_failure is not None:
        problem = "\n".join(filter(None, [cuda_failure, f"the C++ kernels failed to build: {cpu_failure}"]))
        warnings.warn(f"marn.ops: {problem}\nThe plain-PyTorch reference ops run instead.", RuntimeWarning, stacklevel=2)
        return ExtensionStatus(False, False, problem)
    if cuda_failure is not None:
        warnings.warn(f"marn.ops: {cuda_failure}\nOnly the CPU kernels are loaded.", RuntimeWarning, stacklevel=2)
    return ExtensionStatus(True, False, cuda_failure or missing_cuda)
