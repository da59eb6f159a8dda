"""Which implementation runs an op: the innermost `use_backend(name)` block's choice (a stage enters one with
`ops.backend` of params), overridden by $MARN_OPS_BACKEND when that is set; outside any block $MARN_OPS_BACKEND
or `auto`.

- `auto`: the compiled kernels for the tensors' device (C++ on CPU, CUDA on a GPU), else the reference;
- `cpp` / `cuda`: the compiled kernels, for CPU / CUDA tensors only;
- `triton`: the Triton kernels (on CPU only under TRITON_INTERPRET=1, set before marn.ops is imported);
- `reference`: the plain-PyTorch reference.
If the extension cannot be built, `auto`, `cpp` and `cuda` run the reference after one warning.

The ops pick their kernels through `prepared_namespace`, which torch.compile(fullgraph=True) runs
outside the traced code (the build cannot be traced), recompiling when the selected backend changes.
torch.func transforms run on the reference backend only; the registered kernels refuse them by name.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import warnings
from collections.abc import Iterator
from typing import Callable

import torch

from marn.ops import extension

BACKENDS = ("auto", "cpp", "cuda", "triton", "reference")
BACKEND_ENV = "MARN_OPS_BACKEND"
COMPILED_NAMESPACE = "marn"
TRITON_NAMESPACE = "marn_triton"

# A context variable, not a global: a block's choice ends with the block and stays in its thread (and the
# tasks started from it); torch.compile guards on its value like on a global's.
_scoped_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("marn_ops_backend", default=None)


def _validated(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown ops backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def _environment_backend() -> str | None:
    name = os.environ.get(BACKEND_ENV)
    return _validated(name, BACKEND_ENV) if name else None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run the ops called inside the block (in this thread) on backend `name`, or on $MARN_OPS_BACKEND where
    that is set (the operator's override of params); yields the backend chosen. The enclosing choice
    returns when the block ends, also on error."""
    requested = _validated(name, "use_backend")
    chosen = _environment_backend() or requested
    token = _scoped_backend.set(chosen)
    try:
        yield chosen
    finally:
        _scoped_backend.reset(token)


def requested_backend() -> str:
    """The backend of the innermost `use_backend` block; outside any, $MARN_OPS_BACKEND or `auto`."""
    return _scoped_backend.get() or _environment_backend() or "auto"


@functools.cache
def _warn_no_cuda_kernels(problem: str) -> None:
    warnings.warn(f"marn.ops: no CUDA kernels ({problem}); CUDA tensors run the reference ops.", RuntimeWarning, stacklevel=4)


def _compiled_namespace(device: torch.device) -> str | None:
    status = extension.load()
    if not status.loaded:
        return None
    if device.type == "cuda" and not status.has_cuda:
        _warn_no_cuda_kernels(status.problem or "not built")
        return None
    return COMPILED_NAMESPACE


def require_compiled() -> None:
    status = extension.load()
    if not status.loaded:
        raise RuntimeError(f"marn.ops: the compiled ops are not available: {status.problem}")


def op_library(namespace: str, triton_module: str, register: Callable[[str], None]):
    """torch.ops.<namespace> once its kernels exist (the compiled library, or the Triton module that defines
    them; Triton is imported only when asked) and `register(namespace)` added fake kernels and autograd."""
    if namespace == TRITON_NAMESPACE:
        importlib.import_module(triton_module)
    else:
        require_compiled()
    register(namespace)
    return getattr(torch.ops, namespace)


def namespace_for(device: torch.device) -> str | None:
    """The torch.ops namespace whose kernels run on `device`, or None for the reference."""
    return _namespace(requested_backend(), device.type)


def _namespace(backend: str, device_type: str) -> str | None:
    if backend == "reference":
        return None
    if backend == "triton":
        if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                "ops backend 'triton' got CPU tensors: set TRITON_INTERPRET=1 before importing marn.ops "
                "to run the Triton kernels in Triton's interpreter"
            )
        return TRITON_NAMESPACE
    if backend == "cpp" and device_type != "cpu":
        raise ValueError(f"ops backend 'cpp' runs CPU tensors, got tensors on {device_type}")
    if backend == "cuda" and device_type != "cuda":
        raise ValueError(f"ops backend 'cuda' runs CUDA tensors, got tensors on {device_type}")
    if device_type not in ("cpu", "cuda"):
        return None
    return _compiled_namespace(torch.device(device_type))


@torch.compiler.assume_constant_result
def _prepared_namespace(op_module: str, backend: str, device_type: str) -> str | None:
    # torch.compile runs this while tracing instead of tracing it (the build and imports cannot be
    # traced) and keeps the answer; it guards on `backend`, so another backend compiles again.
    namespace = _namespace(backend, device_type)
    if namespace is not None:
        importlib.import_module(op_module).library(namespace)
    return namespace


def prepared_namespace(op: str, op_module: str, device: torch.device) -> str | None:
    """namespace_for(device), with `op_module.library(namespace)` registered, for the op `op` (named in errors).

    Works inside torch.compile(fullgraph=True). torch.func transforms are refused for the registered
    ops: torch.library's autograd for them supports no functorch transform (the reference does).
    """
    namespace = _prepared_namespace(op_module, requested_backend(), device.type)
    if namespace is not None and torch._C._are_functorch_transforms_active():
        raise RuntimeError(
            f"{op}: torch.func transforms (grad, vjp, vmap, jacrev, ...) cannot run the {namespace}:: kernels; "
            "select ops backend 'reference' for them (marn.ops.use_backend('reference') or ops.backend=reference)"
        )
    return namespace
