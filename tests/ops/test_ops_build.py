"""The builds: the CUDA sources compile, CMake builds csrc/ against libtorch and its C++ test passes,
and a failed extension build leaves the reference running after one warning."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.utils

from marn.ops import extension

OPS = ("apgru_cell", "apgru_cell_backward", "apgru_sequence", "apgru_sequence_backward",
       "multi_granularity_embedding", "multi_granularity_embedding_backward")


def test_cuda_sources_compile():
    if torch.version.cuda is None:
        pytest.skip("this torch build has no CUDA, so no CUDA kernels are built")
    if extension.cuda_toolkit() is None:
        pytest.skip("nvcc not found: set CUDA_HOME to a CUDA toolkit to compile the .cu sources")
    # In a process of its own: this one may already hold the CPU-only library, which registers the same ops.
    check = ("import torch; from marn.ops import extension; status = extension.load(); "
             "assert status.has_cuda, status.problem; "
             f"missing = [op for op in {OPS!r} if not torch._C._dispatch_has_kernel_for_dispatch_key('marn::' + op, 'CUDA')]; "
             "assert not missing, missing")
    env = {**os.environ, extension.BUILD_CUDA_ENV: "1"}
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _cmake_cuda_arguments() -> list[str]:
    """A CUDA build of torch makes find_package(Torch) look for the toolkit and NVRTC."""
    if torch.version.cuda is None:
        return []
    toolkit = extension.cuda_toolkit()
    if toolkit is None:
        pytest.skip("find_package(Torch) of a CUDA build of torch needs a CUDA toolkit: set CUDA_HOME")
    import nvidia  # noqa: PLC0415 - ships NVRTC with the CUDA build of torch

    nvrtc = sorted(p for root in [toolkit / "lib64", *(Path(n) / "cu13" / "lib" for n in nvidia.__path__)] for p in root.glob("libnvrtc.so*"))
    return [
        f"-DCUDA_TOOLKIT_ROOT_DIR={toolkit}",
        f"-DCMAKE_CUDA_COMPILER={toolkit / 'bin' / 'nvcc'}",
        *([f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}"] if nvrtc else []),
    ]


def _run(command: list[str], env: dict) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def test_cmake_build_and_ctest():
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    build = extension.build_root() / "cmake"
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    generator = ["-G", "Ninja"] if shutil.which("ninja") and not (build / "Makefile").exists() else []
    _run(["cmake", "-S", str(extension.PROJECT_ROOT), "-B", str(build), *generator,
          f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", *_cmake_cuda_arguments()], env)
    _run(["cmake", "--build", str(build)], env)
    _run(["ctest", "--test-dir", str(build), "--output-on-failure"], env)


FALLBACK_SCRIPT = """
import warnings
warnings.simplefilter("always")
import torch
from marn import ops
x, prop, h0 = torch.randn(2, 3, 4), torch.randn(2, 3, 1), torch.zeros(2, 5)
weights = [torch.randn(15, 4), torch.randn(15, 5), torch.randn(15), torch.randn(15), torch.randn(5, 1)]
lengths = torch.tensor([3, 1])
for _ in range(2):
    out, h_last = ops.apgru_sequence(x, prop, lengths, h0, *weights)
expected, _ = ops.apgru_sequence_reference(x, prop, lengths, h0, *weights)
assert torch.equal(out, expected)
ops.multi_granularity_embedding(torch.randn(4, 1), [torch.tensor([[0.0]])], [torch.randn(3, 2)])
print("ran the reference")
"""


def test_failed_build_runs_reference_after_one_warning():
    # A build folder that cannot be created makes every build attempt fail at once.
    env = {**os.environ, extension.BUILD_DIR_ENV: "/dev/null/marn-build", "MARN_OPS_BACKEND": "auto"}
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300, cwd=extension.PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert "ran the reference" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "RuntimeWarning: marn.ops:" in line]
    assert len(warnings) == 1, result.stderr
    assert "failed to build" in warnings[0] and "reference" in result.stderr
