"""Multi-granularity embedding lookup (paper §3.1.1, "Statistic").

values [N, K] hold K statistics per row (NaN allowed). Granularity g has sorted boundaries
[K, G_g − 1] and a table [K·(G_g + 1), d]: statistic k's bucket b (torch.bucketize with right=False;
NaN → its own bucket G_g) is table row k·(G_g + 1) + b. The output [N, K·|G|, d] holds that row at
slot k·|G| + g. Backward scatters into the tables; under `torch.use_deterministic_algorithms(True)`
the CUDA and Triton kernels sum in a fixed order (the CPU kernel always does).

This module holds the reference (plain PyTorch), the fake kernels and autograd of the registered ops
(`marn::` compiled, `marn_triton::` Triton) and the public function that picks one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from marn.ops import backend, checks

OP = "multi_granularity_embedding"


def multi_granularity_embedding_reference(
    values: torch.Tensor, boundaries: Sequence[torch.Tensor], tables: Sequence[torch.Tensor]
) -> torch.Tensor:
    """All statistics of a granularity in one batched searchsorted and one gather."""
    num_values, statistics = values.shape
    by_statistic = values.t().contiguous()
    first_rows = torch.arange(statistics, device=values.device).unsqueeze(1)
    looked_up = []
    for bounds, table in zip(boundaries, tables):
        bins = bounds.shape[1] + 1
        bucket = torch.searchsorted(bounds, by_statistic, right=False)
        bucket = torch.where(by_statistic.isnan(), bins, bucket)
        looked_up.append(table[(first_rows * (bins + 1) + bucket).t()])
    return torch.stack(looked_up, dim=2).reshape(num_values, statistics * len(tables), tables[0].shape[1])


def _lookup_fake(values, boundaries, tables):
    checks.check_one_device(OP, {"values": values, **_named("boundaries", boundaries), **_named("tables", tables)})
    slots = values.shape[1] * len(tables)
    return (
        tables[0].new_empty(values.shape[0], slots, tables[0].shape[1]),
        values.new_empty(values.shape[0], slots, dtype=torch.int64),
    )


def _lookup_backward_fake(grad_out, rows, table_rows, deterministic):
    checks.check_one_device(f"{OP}_backward", {"grad_out": grad_out, "rows": rows})
    return [grad_out.new_empty(size, grad_out.shape[2]) for size in table_rows]


def _lookup_setup_context(ctx, inputs, output):
    _, _, tables = inputs
    _, rows = output
    ctx.save_for_backward(rows)
    ctx.table_rows = [table.shape[0] for table in tables]
    ctx.deterministic = torch.are_deterministic_algorithms_enabled()


def _named(name: str, tensors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{name}[{g}]": t for g, t in enumerate(tensors)}


def _lookup_backward_setup_context(ctx, inputs, output):
    _, rows, table_rows, _ = inputs
    ctx.save_for_backward(rows)
    ctx.granularities = len(table_rows)


def _lookup_double_backward(ctx, grad_grad_tables):
    # The backward is linear in grad_out (a scatter by rows), so its own backward is the gather by rows.
    (rows,) = ctx.saved_tensors
    num_values, slots = rows.shape
    granularities = ctx.granularities
    gathered = [grad_grad_tables[g][rows[:, g::granularities]] for g in range(granularities)]
    dim = grad_grad_tables[0].shape[1]
    return torch.stack(gathered, dim=2).reshape(num_values, slots, dim), None, None, None


def _register(namespace: str) -> None:
    namespace_ops = getattr(torch.ops, namespace)

    def lookup_backward(ctx, grad_out, _grad_rows):
        (rows,) = ctx.saved_tensors
        grad_tables = namespace_ops.multi_granularity_embedding_backward(
            grad_out.contiguous(), rows, ctx.table_rows, ctx.deterministic
        )
        return None, [None] * len(grad_tables), list(grad_tables)

    torch.library.register_fake(f"{namespace}::multi_granularity_embedding", _lookup_fake)
    torch.library.register_fake(f"{namespace}::multi_granularity_embedding_backward", _lookup_backward_fake)
    torch.library.register_autograd(
        f"{namespace}::multi_granularity_embedding", lookup_backward, setup_context=_lookup_setup_context
    )
    torch.library.register_autograd(
        f"{namespace}::multi_granularity_embedding_backward", _lookup_double_backward,
        setup_context=_lookup_backward_setup_context,
    )


@functools.cache
def library(namespace: str):
    """torch.ops.<namespace> with this op's fake kernels and autograd registered (marn or marn_triton)."""
    return backend.op_library(namespace, "marn.ops.triton_embedding", _register)


def multi_granularity_embedding(
    values: torch.Tensor, boundaries: Sequence[torch.Tensor], tables: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Look up values [N, K] at every granularity: -> [N, K·|G|, d], slot k·|G| + g.

    boundaries[g]: [K, G_g − 1] sorted, dtype of values; tables[g]: [K·(G_g + 1), d], one dtype for all.
    """
    values = values.contiguous()
    boundaries = [b.contiguous() for b in boundaries]
    tables = [t.contiguous() for t in tables]
    namespace = backend.prepared_namespace(OP, __name__, values.device)
    if namespace is None:
        checks.check_embedding_args(OP, values, boundaries, tables)
        return multi_granularity_embedding_reference(values, boundaries, tables)
    out, _ = getattr(torch.ops, namespace).multi_granularity_embedding(values, boundaries, tables)
    return out
