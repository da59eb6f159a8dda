"""torch.compile(fullgraph=True) over the public modules: backend selection and the C++ build run
outside the traced code, the fake kernels and autograd serve the compiled graph, and the result
matches eager on every backend. aot_eager traces forward and backward through the fake kernels
without Inductor's code generation (minutes on this machine)."""

import pytest
import torch
from op_samples import COMPILED_BACKEND, DEVICE, TRITON_RUNS, backend, generator, randn

from marn import ops
from marn.nn.apgru import APGRU
from marn.nn.statistic_embedding import StatisticEmbedding

TRITON = pytest.param("triton", marks=pytest.mark.skipif(not TRITON_RUNS, reason="Triton cannot run here"))
BACKENDS = [COMPILED_BACKEND, TRITON, "reference"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def apgru_case():
    torch.manual_seed(60)
    module = APGRU(4, 5, 2).to(DEVICE)
    gen = generator(61)
    x, prop = randn(gen, 3, 4, 4).requires_grad_(True), randn(gen, 3, 4, 2)
    return module, (x, prop, torch.tensor([4, 0, 2], device=DEVICE))


def embedding_case():
    torch.manual_seed(62)
    gen = generator(63)
    boundaries = [torch.sort(torch.randn(2, g - 1, generator=gen), dim=1).values for g in (4, 3)]
    values = randn(gen, 3, 5, 2)
    values[0, 1, 0] = float("nan")
    return StatisticEmbedding(boundaries, dim=3).to(DEVICE), (values,)


def outputs_and_grads(module, args):
    outputs = module(*args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    leaves = [*module.parameters(), *(a for a in args if a.requires_grad)]
    gen = generator(64)
    loss = sum((out * randn(gen, *out.shape)).sum() for out in outputs)
    return [*outputs, *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", [apgru_case, embedding_case], ids=["apgru", "statistic-embedding"])
def test_fullgraph_compile_matches_eager(name, case):
    module, args = case()
    with backend(name):
        eager = outputs_and_grads(module, args)
        compiled = outputs_and_grads(torch.compile(module, fullgraph=True, backend="aot_eager"), args)
    assert len(compiled) == len(eager)
    for c, e in zip(compiled, eager):
        # The same kernels on the same inputs; only the reference's GEMM order may differ once traced.
        torch.testing.assert_close(c, e, rtol=2e-6, atol=1e-7)


def test_compiled_module_follows_a_backend_change():
    """The backend is guarded: selecting another one compiles again instead of reusing the old choice."""
    module, args = apgru_case()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    with backend("reference"):
        compiled(*args)
    # A backend for the other device refuses these tensors, which shows that it was consulted
    # (the ValueError reaches the caller wrapped by Dynamo, its message intact).
    with ops.use_backend("cuda" if DEVICE.type == "cpu" else "cpp"):
        with pytest.raises(Exception, match="ops backend '(cuda|cpp)' runs (CUDA|CPU) tensors"):
            compiled(*args)


def test_compiled_reference_still_checks_lengths():
    module, (x, prop, _) = apgru_case()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    with backend("reference"), pytest.raises(RuntimeError, match=r"apgru_sequence: lengths must lie in \[0, time\] = \[0, 4\]"):
        compiled(x, prop, torch.tensor([5, 0, 2], device=DEVICE))
