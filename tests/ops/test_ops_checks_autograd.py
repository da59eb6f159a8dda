"""torch.func transforms and double backward: the reference supports both; the registered kernels
support double backward of the embedding (its backward is linear) and refuse the rest by name."""

import pytest
import torch
from op_samples import COMPILED_BACKEND, TOLERANCES, TRITON_RUNS, apgru_inputs, backend, embedding_inputs, generator, randn

from marn import ops

TRITON = pytest.param("triton", marks=pytest.mark.skipif(not TRITON_RUNS, reason="Triton cannot run here"))
KERNEL_BACKENDS = [COMPILED_BACKEND, TRITON]
NAMESPACE = {COMPILED_BACKEND: "marn", "triton": "marn_triton"}


def sequence_inputs() -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in apgru_inputs(2, 3, 4, 5, 2, [3, 1], torch.float64, seed=50).items()}


def sequence_loss(inputs: dict[str, torch.Tensor], weight_hh: torch.Tensor) -> torch.Tensor:
    out, h_last = ops.apgru_sequence(**{**inputs, "weight_hh": weight_hh})
    return (out**2).sum() + h_last.sum()


def cell_loss(inputs: dict[str, torch.Tensor], weight_hh: torch.Tensor) -> torch.Tensor:
    cell_args = (inputs["x"][:, 0].contiguous(), inputs["h0"], inputs["prop"][:, 0].contiguous(), inputs["weight_ih"],
                 weight_hh, inputs["bias_ih"], inputs["bias_hh"], inputs["weight_pz"])
    return (ops.apgru_cell(*cell_args) ** 2).sum()


def embedding_loss(values, boundaries, tables, table: torch.Tensor) -> torch.Tensor:
    out = ops.multi_granularity_embedding(values, boundaries, [table, *tables[1:]])
    return (out**2 * randn(generator(51), *out.shape, dtype=out.dtype)).sum()


def embedding_case():
    values, boundaries, tables = embedding_inputs(9, 2, [4, 3], 3, torch.float64, torch.float64, seed=52)
    return values, boundaries, [t.detach() for t in tables]


def test_func_grad_runs_on_the_reference():
    inputs = sequence_inputs()
    weight_hh = inputs["weight_hh"].clone().requires_grad_(True)
    with backend("reference"):
        by_func = torch.func.grad(lambda w: sequence_loss(inputs, w))(inputs["weight_hh"])
        (by_autograd,) = torch.autograd.grad(sequence_loss(inputs, weight_hh), weight_hh)
    # One computation traced two ways: the same float64 operations in the same order.
    torch.testing.assert_close(by_func, by_autograd, rtol=0, atol=0)


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
@pytest.mark.parametrize("loss", ["sequence", "cell", "embedding"])
def test_func_transforms_are_refused_by_the_kernels(name, loss):
    inputs = sequence_inputs()
    values, boundaries, tables = embedding_case()
    function, argument = {
        "sequence": (lambda w: sequence_loss(inputs, w), inputs["weight_hh"]),
        "cell": (lambda w: cell_loss(inputs, w), inputs["weight_hh"]),
        "embedding": (lambda t: embedding_loss(values, boundaries, tables, t), tables[0]),
    }[loss]
    message = rf"torch.func transforms \(grad, vjp, vmap, jacrev, ...\) cannot run the {NAMESPACE[name]}:: kernels; select ops backend 'reference'"
    with backend(name), pytest.raises(RuntimeError, match=message):
        torch.func.grad(function)(argument)


@pytest.mark.parametrize("name", [*KERNEL_BACKENDS, "reference"])
@pytest.mark.parametrize("op", ["sequence", "cell"])
def test_apgru_double_backward_runs_on_the_reference_only(name, op):
    inputs = sequence_inputs()
    loss_of = sequence_loss if op == "sequence" else cell_loss
    results = {}
    for provider in ("reference", name):
        weight_hh = inputs["weight_hh"].clone().requires_grad_(True)
        with backend(provider):
            (grad,) = torch.autograd.grad(loss_of(inputs, weight_hh), weight_hh, create_graph=True)
            if provider == name != "reference":
                with pytest.raises(RuntimeError, match=f"apgru_{op}: .* double backward .* is not supported; select ops backend 'reference'"):
                    torch.autograd.grad((grad**2).sum(), weight_hh)
            else:
                results[provider] = torch.autograd.grad((grad**2).sum(), weight_hh)[0]
        # create_graph=True alone (no second backward) still gives the first-order gradient.
        results[f"{provider} first order"] = grad.detach()
    torch.testing.assert_close(results[f"{name} first order"], results["reference first order"], **TOLERANCES[torch.float64])
    assert results["reference"].abs().sum() > 0


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
def test_embedding_double_backward_matches_reference(name):
    values, boundaries, tables = embedding_case()
    results = {}
    for provider in ("reference", name):
        table = tables[0].clone().requires_grad_(True)
        with backend(provider):
            (grad,) = torch.autograd.grad(embedding_loss(values, boundaries, tables, table), table, create_graph=True)
            (results[provider],) = torch.autograd.grad((grad**2).sum(), table)
    assert results["reference"].abs().sum() > 0
    # Gathers, scatters and products of float64 values: rounding only.
    torch.testing.assert_close(results[name], results["reference"], **TOLERANCES[torch.float64])
