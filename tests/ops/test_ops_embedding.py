"""The compiled multi-granularity embedding ops against the reference and against bucketize + embedding."""

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from op_samples import COMPILED_BACKEND, DEVICE, assert_all_close, backend, embedding_inputs, outputs_and_grads

from marn import ops
from marn.data.formats import read_stat_boundaries
from marn.nn import StatisticEmbedding
from marn.ops import embedding as embedding_module

DTYPES = st.sampled_from([torch.float32, torch.float64])


@st.composite
def embedding_cases(draw):
    granularities = draw(st.integers(1, 3))
    return {
        "num_values": draw(st.sampled_from([0, 1, 3, 17, 129])),
        "statistics": draw(st.integers(1, 4)),
        "bins": draw(st.lists(st.sampled_from([1, 2, 10, 100]), min_size=granularities, max_size=granularities)),
        "dim": draw(st.sampled_from([1, 3, 8])),
        "value_dtype": draw(DTYPES),
        "table_dtype": draw(DTYPES),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def run_lookup(name: str, values, boundaries, tables, seed: int, deterministic: bool = False) -> list[torch.Tensor]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        with backend(name):
            out = ops.multi_granularity_embedding(values, boundaries, tables)
        return outputs_and_grads((out,), tables, seed)
    finally:
        torch.use_deterministic_algorithms(previous)


@settings(max_examples=40, deadline=None)
@given(case=embedding_cases(), deterministic=st.booleans())
def test_lookup_matches_reference(case, deterministic):
    values, boundaries, tables = embedding_inputs(**case)
    expected = run_lookup("reference", values, boundaries, tables, case["seed"])
    actual = run_lookup(COMPILED_BACKEND, values, boundaries, tables, case["seed"], deterministic)
    names = ["out"] + [f"grad tables[{g}]" for g in range(len(tables))]
    # A gather is exact, and the CPU backward adds each row's gradients in the reference's order (no error
    # in 200 cases); the CUDA atomic scatter adds them in any order.
    assert_all_close(actual, expected, names, case["table_dtype"], exact=DEVICE.type == "cpu")


def test_lookup_equals_bucketize_embedding_cat():
    """The peer formulation: per statistic and granularity, torch.bucketize, F.embedding, then cat."""
    values, boundaries, tables = embedding_inputs(257, 4, [10, 100], 8, torch.float32, torch.float32, seed=7, special_share=0.5)
    slots = []
    for k in range(values.shape[1]):
        for bounds, table in zip(boundaries, tables):
            bins = bounds.shape[1] + 1
            bucket = torch.bucketize(values[:, k].contiguous(), bounds[k], right=False)
            bucket = torch.where(values[:, k].isnan(), bins, bucket)
            slots.append(F.embedding(bucket + k * (bins + 1), table))
    expected = torch.stack(slots, dim=1)
    with backend(COMPILED_BACKEND):
        actual = ops.multi_granularity_embedding(values, boundaries, tables)
    assert values.isnan().any() and values.isinf().any()
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_edge_values_pick_documented_buckets():
    boundaries = [torch.tensor([[0.0, 1.0, 2.0]], device=DEVICE)]
    table = torch.arange(5, dtype=torch.float32, device=DEVICE).view(5, 1)
    values = torch.tensor([[-float("inf")], [0.0], [0.5], [1.0], [2.0], [float("inf")], [float("nan")]], device=DEVICE)
    with backend(COMPILED_BACKEND):
        rows = ops.multi_granularity_embedding(values, boundaries, [table]).flatten().tolist()
    # On a boundary a value belongs below it (right=False); +inf is past the last; NaN has row G.
    assert rows == [0, 0, 1, 1, 2, 3, 4]


def test_deterministic_backward_is_bitwise_repeatable():
    values, boundaries, tables = embedding_inputs(4096, 4, [10, 100], 8, torch.float32, torch.float32, seed=8)
    first = run_lookup(COMPILED_BACKEND, values, boundaries, tables, seed=9, deterministic=True)
    second = run_lookup(COMPILED_BACKEND, values, boundaries, tables, seed=9, deterministic=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_gradcheck_float64():
    values, boundaries, tables = embedding_inputs(9, 2, [3, 1], 2, torch.float64, torch.float64, seed=10)
    with backend(COMPILED_BACKEND):
        assert torch.autograd.gradcheck(lambda *t: ops.multi_granularity_embedding(values, boundaries, list(t)), tuple(tables))


def test_opcheck():
    library = embedding_module.library("marn")
    values, boundaries, tables = embedding_inputs(33, 3, [10, 4], 5, torch.float32, torch.float32, seed=11)
    torch.library.opcheck(library.multi_granularity_embedding.default, (values, boundaries, tables))


def test_statistic_embedding_module_on_prepared_boundaries(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "stat_boundaries.npz"
    g10, g100 = (np.sort(rng.normal(size=(4, g - 1)), axis=1).astype(np.float32) for g in (10, 100))
    np.savez(path, g100=g100, g10=g10, names=np.array(["n_reviews", "mean_rating", "price", "sales_rank"]))
    layer = StatisticEmbedding(list(read_stat_boundaries(tmp_path).boundaries), dim=8).to(DEVICE)
    assert [b.shape[1] + 1 for b in layer.boundaries] == [10, 100]
    assert [tuple(t.shape) for t in layer.tables] == [(44, 8), (404, 8)]
    values = torch.tensor(rng.normal(size=(2, 3, 4)), dtype=torch.float32, device=DEVICE)
    values[0, 0, 2] = float("nan")
    with backend(COMPILED_BACKEND):
        out = layer(values)
    assert out.shape == (2, 3, 8, 8)
    # Statistic 2 (price) at granularity 0 sits in slot 2*|G| + 0; NaN takes the table's row 2*(10+1)+10.
    torch.testing.assert_close(out[0, 0, 4], layer.tables[0][2 * 11 + 10])
    out.sum().backward()
    assert all(t.grad is not None for t in layer.tables)
