"""The Table 2 baselines: each trains on tiny data, saves and loads; DIEN's auxiliary loss and attention ignore
padding; the interaction layers and AUGRU match brute-force or torch references."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from tests.tiny_data import tiny_architecture, tiny_config, tiny_model, tiny_paths

from marn import train

from marn.analysis.paper import TABLE2_BASELINES
from marn.data.dataset import CTRDataset
from marn.models.baselines import BASELINES
from marn.models.baselines.dien import auxiliary_loss
from marn.models.persistence import load_model, save_model
from marn.models.registry import MODELS
from marn.nn.augru import AUGRU
from marn.nn.interactions import CompressedInteractionNetwork, factorization_machine_pairs
from marn.nn.pooling import masked_mean, masked_softmax


@pytest.fixture(scope="module")
def batch(tiny_data):
    dataset = CTRDataset(tiny_data.prepared_dir, "train", max_len=6, time_gap_buckets=6)
    return dataset.__getitems__(list(range(0, 60, 3)))




def test_every_table2_baseline_is_registered_by_its_paper_name():
    assert set(TABLE2_BASELINES) == set(BASELINES) and set(BASELINES) <= set(MODELS)


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_trains_with_decreasing_ctr_loss(name, tiny_data, tmp_path):
    metrics = train.run(tiny_config(epochs=4), tiny_paths(tiny_data, tmp_path), name)
    first, *_, last = metrics["epoch_loss_ctr"]
    assert last < 0.8 * first, metrics["epoch_loss_ctr"]
    assert (metrics["final"]["loss_aux"] > 0) == (name == "DIEN")
    assert metrics["final"]["loss_adv"] == 0


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_saves_and_loads_to_the_same_predictions(name, tiny_table, batch, tmp_path):
    model = tiny_model(name, tiny_table).eval()
    save_model(tmp_path / "model.pt", name, model, tiny_architecture(), tiny_table)
    loaded = load_model(tmp_path / "model.pt", name, tiny_table)
    with torch.inference_mode():
        expected, actual = model(batch), loaded(batch)
    torch.testing.assert_close(actual["logit"], expected["logit"], rtol=0, atol=0)
    assert actual["aux_losses"] == {}
    torch.testing.assert_close(actual["prob"], torch.sigmoid(actual["logit"]))


def _with_padding_changed(batch, seed):
    generator = torch.Generator().manual_seed(seed)
    padding = ~batch.hist_mask
    changed = {}
    for key, high in (("hist_items", 30), ("hist_type", 2), ("hist_gap", 6)):
        values = getattr(batch, key)
        changed[key] = torch.where(padding, torch.randint(0, high, values.shape, generator=generator), values)
    return dataclasses.replace(batch, **changed)


@pytest.mark.parametrize("name", list(BASELINES))
def test_changing_padded_history_steps_changes_no_output(name, tiny_table, batch):
    assert (~batch.hist_mask).any() and batch.hist_mask.any(1).all()
    model = tiny_model(name, tiny_table).train()
    changed = _with_padding_changed(batch, seed=5)
    assert not torch.equal(changed.hist_items, batch.hist_items)
    torch.manual_seed(11)  # DIEN draws its negatives from the global generator
    expected = model(batch)
    torch.manual_seed(11)
    actual = model(changed)
    torch.testing.assert_close(actual["logit"], expected["logit"], rtol=0, atol=0)
    assert actual["aux_losses"].keys() == expected["aux_losses"].keys()
    for key in expected["aux_losses"]:
        torch.testing.assert_close(actual["aux_losses"][key], expected["aux_losses"][key], rtol=0, atol=0)


def test_dien_auxiliary_loss_averages_over_real_pairs_only():
    torch.manual_seed(0)
    states, history = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    lengths = torch.tensor([5, 2, 1])
    mask = torch.arange(5) < lengths[:, None]
    pairs = mask[:, 1:] & mask[:, :-1]
    negatives = torch.randn(int(pairs.sum()), 4)
    terms, k = [], 0
    for b, t in itertools.product(range(3), range(4)):
        if t + 1 < lengths[b]:
            positive = torch.dot(states[b, t], history[b, t + 1])
            negative = torch.dot(states[b, t], negatives[k])
            terms.append(-torch.nn.functional.logsigmoid(positive) - torch.nn.functional.logsigmoid(-negative))
            k += 1
    torch.testing.assert_close(auxiliary_loss(states, history, negatives, pairs), torch.stack(terms).mean())
    no_pairs = torch.zeros(3, 4, dtype=torch.bool)
    assert auxiliary_loss(states, history, negatives[:0], no_pairs) == 0


def test_dien_gets_a_nonzero_auxiliary_gradient_on_its_item_encoder(tiny_table, batch):
    model = tiny_model("DIEN", tiny_table).train()
    aux = model(batch)["aux_losses"]["aux"]
    gradient, = torch.autograd.grad(aux, model.items.modality_embedding.encoders["image"].projection.weight)
    assert gradient.abs().sum() > 0


def test_augru_with_full_attention_is_a_gru_and_stops_at_zero_attention():
    torch.manual_seed(0)
    gru, augru = torch.nn.GRU(3, 4, batch_first=True), AUGRU(3, 4)
    hidden = 4
    with torch.no_grad():
        # nn.GRU keeps z of the old state, AUGRU keeps 1 - u: the update block flips sign
        flip = torch.ones(3 * hidden, 1)
        flip[hidden:2 * hidden] = -1
        augru.input_gates.weight.copy_(gru.weight_ih_l0 * flip)
        augru.input_gates.bias.copy_(gru.bias_ih_l0 * flip.squeeze(1))
        augru.hidden_gates.weight.copy_(gru.weight_hh_l0 * flip)
        augru.hidden_gates.bias.copy_(gru.bias_hh_l0 * flip.squeeze(1))
    x = torch.randn(2, 6, 3)
    _, last = gru(x)
    torch.testing.assert_close(augru(x, torch.ones(2, 6)), last.squeeze(0))
    attention = torch.rand(2, 6)
    attention[:, 4:] = 0
    scrambled = x.clone()
    scrambled[:, 4:] = 100 * torch.randn(2, 2, 3)
    torch.testing.assert_close(augru(scrambled, attention), augru(x[:, :4], attention[:, :4]), rtol=0, atol=0)


def test_factorization_machine_pairs_match_the_double_sum():
    fields = torch.randn(4, 5, 3, dtype=torch.float64)
    brute = sum((fields[:, i] * fields[:, j]).sum(1) for i in range(5) for j in range(i + 1, 5))
    torch.testing.assert_close(factorization_machine_pairs(fields), brute)


def test_cin_matches_eq6_written_out():
    torch.manual_seed(0)
    cin = CompressedInteractionNetwork(3, [2, 4]).double()
    fields = torch.randn(2, 3, 5, dtype=torch.float64)
    hidden, pooled = fields, []
    for layer in cin.layers:
        weight = layer.weight.squeeze(2).view(layer.out_channels, hidden.shape[1], 3)
        hidden = torch.stack([sum(weight[h, i, j] * hidden[:, i] * fields[:, j]
                                  for i in range(weight.shape[1]) for j in range(3)) + layer.bias[h]
                              for h in range(layer.out_channels)], dim=1)
        pooled.append(hidden.sum(2))
    torch.testing.assert_close(cin(fields), torch.cat(pooled, 1))


def test_masked_pooling_reads_valid_steps_and_gives_zero_for_an_empty_row():
    values = torch.tensor([[[1.0], [3.0], [float("nan")]], [[5.0], [7.0], [9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(masked_mean(values, mask), torch.tensor([[2.0], [0.0]]))
    weights = masked_softmax(torch.tensor([[0.0, 0.0, 50.0], [1.0, 2.0, 3.0]]), mask)
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))
