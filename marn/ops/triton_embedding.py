"""Multi-granularity embedding lookup in Triton, behind the `marn_triton::` ops.

Same schemas and layout as the compiled `marn::` ops (see csrc/schema.cpp and marn.ops.embedding).
The granularities' boundaries and tables are packed into flat buffers so one launch covers them all.
Backward: atomic adds, or under the deterministic flag a stable sort of the target rows followed by
one in-order sum per table row.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from marn.ops import checks

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter costs ~3 ms per program whatever its size, so it gets few, large blocks; the GPU
# blocks are common defaults that no measurement here has tuned.
BLOCK_VALUES = 1024 if _INTERPRETED else 128
BLOCK_ITEMS = 1024 if _INTERPRETED else 128
BLOCK_RUN = 256 if _INTERPRETED else 32


@triton.jit
def _lookup_kernel(
    values_ptr, boundaries_ptr, tables_ptr, meta_ptr, out_ptr, rows_ptr,
    num_values, statistics, granularities, dim, search_steps,
    BLOCK_VALUES: tl.constexpr, BLOCK_DIM: tl.constexpr,
):
    # meta holds per granularity: bins G_g, offset of its boundaries, offset of its first table row.
    slot = tl.program_id(1)
    k = slot // granularities
    g = slot % granularities
    bins = tl.load(meta_ptr + g * 3)
    first_boundary = boundaries_ptr + tl.load(meta_ptr + g * 3 + 1) + k * (bins - 1)
    first_row = tl.load(meta_ptr + g * 3 + 2)
    n = tl.program_id(0).to(tl.int64) * BLOCK_VALUES + tl.arange(0, BLOCK_VALUES)
    mask = n < num_values
    v = tl.load(values_ptr + n * statistics + k, mask=mask, other=0.0)
    # Binary search for the count of boundaries strictly below v (bucketize, right=False).
    low = tl.zeros([BLOCK_VALUES], dtype=tl.int64)
    high = tl.zeros([BLOCK_VALUES], dtype=tl.int64) + (bins - 1)
    for _ in range(search_steps):
        active = low < high
        mid = (low + high) // 2
        below = active & (tl.load(first_boundary + mid, mask=mask & active, other=0.0) < v)
        low = tl.where(below, mid + 1, low)
        high = tl.where(active & ~below, mid, high)
    bucket = tl.where(v != v, bins, low)
    row = k * (bins + 1) + bucket
    slots = statistics * granularities
    tl.store(rows_ptr + n * slots + slot, row, mask=mask)
    d = tl.arange(0, BLOCK_DIM)
    tile_mask = mask[:, None] & (d < dim)[None, :]
    vectors = tl.load(tables_ptr + (first_row + row)[:, None] * dim + d[None, :], mask=tile_mask)
    tl.store(out_ptr + (n * slots + slot)[:, None] * dim + d[None, :], vectors, mask=tile_mask)


@triton.jit
def _scatter_atomic_kernel(
    grad_ptr, rows_ptr, table_offsets_ptr, grad_tables_ptr, items, granularities, dim,
    BLOCK_ITEMS: tl.constexpr, BLOCK_DIM: tl.constexpr,
):
    item = tl.program_id(0).to(tl.int64) * BLOCK_ITEMS + tl.arange(0, BLOCK_ITEMS)
    mask = item < items
    row = tl.load(rows_ptr + item, mask=mask, other=0) + tl.load(table_offsets_ptr + item % granularities, mask=mask, other=0)
    d = tl.arange(0, BLOCK_DIM)
    tile_mask = mask[:, None] & (d < dim)[None, :]
    grad = tl.load(grad_ptr + item[:, None] * dim + d[None, :], mask=tile_mask, other=0.0)
    tl.atomic_add(grad_tables_ptr + row[:, None] * dim + d[None, :], grad, mask=tile_mask)


@triton.jit
def _scatter_sorted_kernel(
    grad_ptr, order_ptr, run_rows_ptr, run_starts_ptr, run_ends_ptr, grad_tables_ptr, dim,
    BLOCK_RUN: tl.constexpr, BLOCK_DIM: tl.constexpr,
):
    # One program per table row: its items' gradients summed in their original order.
    run = tl.program_id(0)
    start = tl.load(run_starts_ptr + run)
    end = tl.load(run_ends_ptr + run)
    d = tl.arange(0, BLOCK_DIM)
    acc = tl.zeros([BLOCK_RUN, BLOCK_DIM], dtype=grad_tables_ptr.dtype.element_ty)
    for first in range(start, end, BLOCK_RUN):
        position = first + tl.arange(0, BLOCK_RUN)
        in_run = position < end
        item = tl.load(order_ptr + position, mask=in_run, other=0)
        acc += tl.load(grad_ptr + item[:, None] * dim + d[None, :], mask=in_run[:, None] & (d < dim)[None, :], other=0.0)
    row = tl.load(run_rows_ptr + run)
    tl.store(grad_tables_ptr + row * dim + d, tl.sum(acc, axis=0), mask=d < dim)


@torch.library.custom_op("marn_triton::multi_granularity_embedding", mutates_args=())
def multi_granularity_embedding(
    values: torch.Tensor, boundaries: list[torch.Tensor], tables: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    bins = checks.check_embedding_args("marn_triton::multi_granularity_embedding", values, boundaries, tables)
    num_values, statistics = values.shape
    granularities, dim = len(tables), tables[0].shape[1]
    slots = statistics * granularities
    out = tables[0].new_empty(num_values, slots, dim)
    rows = values.new_empty(num_values, slots, dtype=torch.int64)
    if rows.numel() == 0:
        return out, rows
    boundary_offsets = torch.tensor([0] + [b.numel() for b in boundaries[:-1]]).cumsum(0)
    row_offsets = torch.tensor([0] + [t.shape[0] for t in tables[:-1]]).cumsum(0)
    meta = torch.stack([torch.tensor(bins), boundary_offsets, row_offsets], dim=1).to(values.device)
    boundary_buffer = torch.cat([b.view(-1) for b in boundaries]) if any(b.numel() for b in boundaries) else values.new_zeros(1)
    _lookup_kernel[(triton.cdiv(num_values, BLOCK_VALUES), slots)](
        values, boundary_buffer, torch.cat(list(tables)), meta, out, rows,
        num_values, statistics, granularities, dim, max(bins).bit_length(),
        BLOCK_VALUES=BLOCK_VALUES, BLOCK_DIM=triton.next_power_of_2(max(dim, 1)),
    )
    return out, rows


@torch.library.custom_op("marn_triton::multi_granularity_embedding_backward", mutates_args=())
def multi_granularity_embedding_backward(
    grad_out: torch.Tensor, rows: torch.Tensor, table_rows: list[int], deterministic: bool
) -> list[torch.Tensor]:
    checks.check_embedding_backward_args("marn_triton::multi_granularity_embedding_backward", grad_out, rows, table_rows)
    dim = grad_out.shape[2]
    grad_buffer = grad_out.new_zeros(sum(table_rows), dim)
    block_dim = triton.next_power_of_2(max(dim, 1))
    table_offsets = torch.tensor([0, *table_rows[:-1]]).cumsum(0).to(grad_out.device)
    if rows.numel() and dim:
        if deterministic:
            # A stable sort groups each table row's items in their original order.
            flat_rows = (rows.view(-1, len(table_rows)) + table_offsets).view(-1)
            sorted_rows, order = torch.sort(flat_rows, stable=True)
            run_rows, run_counts = torch.unique_consecutive(sorted_rows, return_counts=True)
            run_ends = run_counts.cumsum(0)
            _scatter_sorted_kernel[(run_rows.numel(),)](
                grad_out, order, run_rows, run_ends - run_counts, run_ends, grad_buffer, dim,
                BLOCK_RUN=BLOCK_RUN, BLOCK_DIM=block_dim,
            )
        else:
            _scatter_atomic_kernel[(triton.cdiv(rows.numel(), BLOCK_ITEMS),)](
                grad_out, rows, table_offsets, grad_buffer, rows.numel(), len(table_rows), dim,
                BLOCK_ITEMS=BLOCK_ITEMS, BLOCK_DIM=block_dim,
            )
    return [part.clone() for part in grad_buffer.split(list(table_rows))]
