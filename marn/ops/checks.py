"""Input checks for the ops' Python paths (reference and Triton), matching the C++ `TORCH_CHECK`s.

Shape and value problems raise ValueError, dtype problems TypeError, out-of-range indices
IndexError; each message names the op, the argument and what it got.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def _require(condition: bool, error: type[Exception], op: str, message: str) -> None:
    if not condition:
        raise error(f"{op}: {message}")


def _require_all(condition: torch.Tensor, error: type[Exception], op: str, message: str, detail=lambda: "") -> None:
    """A check of tensor values: the named error eagerly; under torch.compile, where values are unknown
    while tracing, a runtime assertion in the graph (its message cannot hold values, so no `detail`).
    Meta tensors hold no values to check."""
    if condition.device.type == "meta":
        return
    if torch.compiler.is_compiling():
        torch._assert_async(condition.all(), f"{op}: {message}")
    elif not bool(condition.all()):
        raise error(f"{op}: {message}{detail()}")


def check_one_device(op: str, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor on the first one's device. The fake kernels check this too: a single `meta` argument
    sends a call to them, and they would return uninitialised tensors on the other arguments' device."""
    (first_name, first), *_ = tensors.items()
    for name, t in tensors.items():
        _require(t.device == first.device, ValueError, op, f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_dim(op: str, name: str, t: torch.Tensor, dim: int, meaning: str) -> None:
    _require(isinstance(t, torch.Tensor), TypeError, op, f"{name} must be a tensor, got {type(t).__name__}")
    _require(t.dim() == dim, ValueError, op, f"{name} must be a {dim}-D {meaning} tensor, got shape {list(t.shape)}")


def check_shape(op: str, name: str, t: torch.Tensor, expected: Sequence[int], meaning: str) -> None:
    _require(
        list(t.shape) == list(expected), ValueError, op,
        f"{name} must have shape {list(expected)} {meaning}, got {list(t.shape)}",
    )


def check_float_group(op: str, tensors: dict[str, torch.Tensor]) -> None:
    """Tensors one kernel reads together: float32/float64, one dtype, one device, contiguous."""
    (first_name, first), *_ = tensors.items()
    _require(first.dtype in FLOAT_DTYPES, TypeError, op, f"{first_name} must be float32 or float64, got {first.dtype}")
    check_one_device(op, tensors)
    for name, t in tensors.items():
        _require(t.dtype == first.dtype, TypeError, op, f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}")
        _require(t.is_contiguous(), ValueError, op, f"{name} must be contiguous, got strides {t.stride()} for shape {list(t.shape)}")


def check_lengths(op: str, lengths: torch.Tensor, batch: int, time: int, device: torch.device) -> None:
    check_dim(op, "lengths", lengths, 1, "[batch]")
    check_shape(op, "lengths", lengths, [batch], "[batch]")
    _require(lengths.dtype == torch.int64, TypeError, op, f"lengths must have dtype torch.int64, got {lengths.dtype}")
    _require(lengths.device == device, ValueError, op, f"lengths is on {lengths.device} but x is on {device}")
    if batch:
        _require_all(
            (lengths >= 0) & (lengths <= time), IndexError, op, f"lengths must lie in [0, time] = [0, {time}]",
            lambda: ", got values in [{}, {}]".format(*(int(v) for v in torch.aminmax(lengths))),
        )


def _check_apgru_weights(
    op: str, inputs: int, hidden: int, props: int, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
    weight_pz: torch.Tensor,
) -> None:
    """The weight shapes of both APGRU ops, for x [.., input], a state [.., hidden] and properties [.., property]."""
    check_shape(op, "weight_ih", weight_ih, [3 * hidden, inputs], "[3*hidden, input]")
    check_shape(op, "weight_hh", weight_hh, [3 * hidden, hidden], "[3*hidden, hidden]")
    check_shape(op, "weight_pz", weight_pz, [hidden, props], "[hidden, property]")


def _check_apgru_bias_shapes(op: str, hidden: int, bias_ih: torch.Tensor, bias_hh: torch.Tensor) -> None:
    check_shape(op, "bias_ih", bias_ih, [3 * hidden], "[3*hidden]")
    check_shape(op, "bias_hh", bias_hh, [3 * hidden], "[3*hidden]")


def check_apgru_sequence_args(
    op: str, x: torch.Tensor, prop: torch.Tensor, lengths: torch.Tensor, h0: torch.Tensor, weight_ih: torch.Tensor,
    weight_hh: torch.Tensor, weight_pz: torch.Tensor,
) -> None:
    """What the sequence op and its backward read besides the biases."""
    check_dim(op, "x", x, 3, "[batch, time, input]")
    check_dim(op, "h0", h0, 2, "[batch, hidden]")
    check_dim(op, "prop", prop, 3, "[batch, time, property]")
    batch, time, inputs = x.shape
    hidden, props = h0.shape[1], prop.shape[2]
    check_float_group(op, {"x": x, "prop": prop, "h0": h0, "weight_ih": weight_ih, "weight_hh": weight_hh, "weight_pz": weight_pz})
    check_shape(op, "h0", h0, [batch, hidden], "[batch, hidden]")
    check_shape(op, "prop", prop, [batch, time, props], "[batch, time, property]")
    _check_apgru_weights(op, inputs, hidden, props, weight_ih, weight_hh, weight_pz)
    check_lengths(op, lengths, batch, time, x.device)


def check_apgru_sequence_inputs(
    op: str, x: torch.Tensor, prop: torch.Tensor, lengths: torch.Tensor, h0: torch.Tensor, weight_ih: torch.Tensor,
    weight_hh: torch.Tensor, bias_ih: torch.Tensor, bias_hh: torch.Tensor, weight_pz: torch.Tensor,
) -> None:
    """The sequence op's arguments, in its order: `check_apgru_sequence_args`, then the biases."""
    check_apgru_sequence_args(op, x, prop, lengths, h0, weight_ih, weight_hh, weight_pz)
    check_float_group(op, {"x": x, "bias_ih": bias_ih, "bias_hh": bias_hh})
    _check_apgru_bias_shapes(op, h0.shape[1], bias_ih, bias_hh)


def check_apgru_cell_inputs(
    op: str, x: torch.Tensor, h: torch.Tensor, prop: torch.Tensor, weight_ih: torch.Tensor, weight_hh: torch.Tensor,
    bias_ih: torch.Tensor, bias_hh: torch.Tensor, weight_pz: torch.Tensor,
) -> None:
    """The public cell's arguments, in its order, before its input projection runs on any backend."""
    check_dim(op, "x", x, 2, "[batch, input]")
    check_dim(op, "h", h, 2, "[batch, hidden]")
    check_dim(op, "prop", prop, 2, "[batch, property]")
    (batch, inputs), hidden, props = x.shape, h.shape[1], prop.shape[1]
    check_float_group(op, {
        "x": x, "h": h, "prop": prop, "weight_ih": weight_ih, "weight_hh": weight_hh,
        "bias_ih": bias_ih, "bias_hh": bias_hh, "weight_pz": weight_pz,
    })
    check_shape(op, "h", h, [batch, hidden], "[batch, hidden]")
    check_shape(op, "prop", prop, [batch, props], "[batch, property]")
    _check_apgru_weights(op, inputs, hidden, props, weight_ih, weight_hh, weight_pz)
    _check_apgru_bias_shapes(op, hidden, bias_ih, bias_hh)


def check_apgru_cell_args(
    op: str, input_gates: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor
) -> None:
    check_dim(op, "h", h, 2, "[batch, hidden]")
    batch, hidden = h.shape
    check_float_group(op, {"input_gates": input_gates, "h": h, "weight_hh": weight_hh, "bias_hh": bias_hh})
    check_shape(op, "input_gates", input_gates, [batch, 3 * hidden], "[batch, 3*hidden]")
    check_shape(op, "weight_hh", weight_hh, [3 * hidden, hidden], "[3*hidden, hidden]")
    check_shape(op, "bias_hh", bias_hh, [3 * hidden], "[3*hidden]")


def check_embedding_args(
    op: str, values: torch.Tensor, boundaries: Sequence[torch.Tensor], tables: Sequence[torch.Tensor]
) -> list[int]:
    """Returns the bin count G_g of each granularity."""
    check_dim(op, "values", values, 2, "[N, statistics]")
    _require(values.dtype in FLOAT_DTYPES, TypeError, op, f"values must be float32 or float64, got {values.dtype}")
    _require(values.is_contiguous(), ValueError, op, "values must be contiguous")
    _require(len(boundaries) > 0, ValueError, op, "boundaries must hold at least one granularity")
    _require(
        len(boundaries) == len(tables), ValueError, op,
        f"got {len(boundaries)} boundary tensors but {len(tables)} tables; each granularity needs one of each",
    )
    statistics = values.shape[1]
    check_dim(op, "tables[0]", tables[0], 2, "[statistics * (bins + 1), dim]")
    dim = tables[0].shape[1]
    bins = []
    for g, (b, table) in enumerate(zip(boundaries, tables)):
        check_dim(op, f"boundaries[{g}]", b, 2, "[statistics, bins - 1]")
        _require(b.dtype == values.dtype, TypeError, op, f"boundaries[{g}] must have dtype {values.dtype}, got {b.dtype}")
        _require(b.device == values.device, ValueError, op, f"boundaries[{g}] is on {b.device} but the other inputs are on {values.device}")
        _require(b.is_contiguous(), ValueError, op, f"boundaries[{g}] must be contiguous")
        _require(
            b.shape[0] == statistics, ValueError, op,
            f"boundaries[{g}] has {b.shape[0]} rows but values has {statistics} statistics",
        )
        bins.append(b.shape[1] + 1)
        check_dim(op, f"tables[{g}]", table, 2, "[statistics * (bins + 1), dim]")
        _require(table.dtype in FLOAT_DTYPES, TypeError, op, f"tables[{g}] must be float32 or float64, got {table.dtype}")
        _require(table.dtype == tables[0].dtype, TypeError, op, f"tables[{g}] must have dtype {tables[0].dtype}, got {table.dtype}")
        _require(table.device == values.device, ValueError, op, f"tables[{g}] is on {table.device} but the other inputs are on {values.device}")
        _require(table.is_contiguous(), ValueError, op, f"tables[{g}] must be contiguous")
        check_shape(
            op, f"tables[{g}]", table, [statistics * (bins[-1] + 1), dim],
            "[statistics * (bins + 1), dim] (one row per bucket plus one for NaN)",
        )
        if b.numel():
            ordered = (b[:, 1:] >= b[:, :-1]).all() & ~b.isnan().any()
            _require_all(ordered, ValueError, op, f"every row of boundaries[{g}] must be sorted ascending and free of NaN")
    return bins


def check_embedding_backward_args(op: str, grad_out: torch.Tensor, rows: torch.Tensor, table_rows: Sequence[int]) -> None:
    check_dim(op, "grad_out", grad_out, 3, "[N, slots, dim]")
    _require(grad_out.is_contiguous() and rows.is_contiguous(), ValueError, op, "grad_out and rows must be contiguous")
    check_shape(op, "rows", rows, grad_out.shape[:2], "[N, slots]")
    _require(rows.dtype == torch.int64, TypeError, op, f"rows must have dtype torch.int64, got {rows.dtype}")
    granularities = len(table_rows)
    _require(
        granularities > 0 and grad_out.shape[1] % granularities == 0, ValueError, op,
        f"the {grad_out.shape[1]} slots must split evenly over the {granularities} granularities",
    )
    if rows.numel():
        by_granularity = rows.view(-1, granularities)
        for g, (low, high) in enumerate(zip(by_granularity.amin(0).tolist(), by_granularity.amax(0).tolist())):
            for row in (low, high):
                _require(
                    0 <= row < table_rows[g], IndexError, op,
                    f"rows of granularity {g} must lie in [0, {table_rows[g]}), got {row}",
                )
