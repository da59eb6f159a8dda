"""MARN and its ablations assembled: outputs, gradient flow on the whole autograd graph, padding, registry."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from tests.tiny_data import tiny_architecture, tiny_model

import marn
from marn.batch import Batch
from marn.data.dataset import CTRDataset
from marn.models.base import encode_batch_items
from marn.models.baselines import BASELINES
from marn.models.persistence import model_file
from marn.models.registry import ABLATIONS, MODELS, TABLE3_LADDER, build_model, model_folder

ADVERSARIAL_WEIGHT = 0.04


@pytest.fixture(scope="module")
def batch(tiny_data):
    dataset = CTRDataset(tiny_data.prepared_dir, "train", max_len=6, time_gap_buckets=6)
    return dataset.__getitems__(list(range(0, 40, 2)))


def _build(name, table, seed=0):
    return tiny_model(name, table, seed).train()


def _parameters(module):
    return [p for p in module.parameters() if p.requires_grad]


@pytest.mark.parametrize("name", [name for name in MODELS if name not in BASELINES])  # baselines: test_baselines.py
def test_every_model_returns_probabilities_and_its_own_losses(name, tiny_table, batch):
    model = _build(name, tiny_table)
    outputs = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)
    assert outputs["logit"].shape == outputs["prob"].shape == batch.label.shape
    torch.testing.assert_close(outputs["prob"], torch.sigmoid(outputs["logit"]))
    expected = {"maf+ddma": {"d0", "adv", "ds"}, "maf+adv": {"adv"}}.get(model.variant.fusion, set())
    assert set(outputs["aux_losses"]) == expected
    total, parts = model.compute_loss(outputs, batch.label)
    # eq. 10: lambda weighs L_ADV (and L_Ds, which shares D1's matrix); the log keeps each loss unweighted
    weighted = {name: ADVERSARIAL_WEIGHT if name in ("adv", "ds") else 1.0 for name in parts}
    torch.testing.assert_close(total, sum(weighted[name] * loss for name, loss in parts.items()))
    assert model.eval()(batch)["aux_losses"] == {}


def _gradients(loss, parameters):
    return torch.autograd.grad(loss, parameters, allow_unused=True, retain_graph=True)


def test_d0_loss_trains_d0_only(tiny_table, batch):
    model = _build("MARN", tiny_table)
    d0 = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)["aux_losses"]["d0"]
    d0_parameters = set(model.adversary.invariance_discriminator.parameters())
    others = [p for p in _parameters(model) if p not in d0_parameters]
    assert all(g is None for g in _gradients(d0, others))
    assert all(g.abs().sum() > 0 for g in _gradients(d0, list(d0_parameters)))


def test_ds_loss_trains_specific_projections_and_discriminator_but_not_the_embeddings(tiny_table, batch):
    model = _build("MARN", tiny_table)
    ds = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)["aux_losses"]["ds"]
    trained = {model.fusion.specific_projection.weight, model.fusion.specific_projection.bias,
               *model.adversary.modality_discriminator.parameters()}
    assert all(g is None for g in _gradients(ds, [p for p in _parameters(model) if p not in trained]))
    assert all(g.abs().sum() > 0 for g in _gradients(ds, list(trained)))


@pytest.mark.parametrize("name", ["BaseModel+MAF+ADV", "BaseModel+MAF+DDMA", "MARN"])
def test_adversarial_loss_reaches_the_invariant_projection_and_its_discriminator_only(name, tiny_table, batch):
    model = _build(name, tiny_table)
    adv = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)["aux_losses"]["adv"]
    invariant_projection = _parameters(model.fusion.invariant_projection)
    discriminator = (model.adversary.pair_discriminators if name == "BaseModel+MAF+ADV"
                     else model.adversary.modality_discriminator)
    reached = {*invariant_projection, *discriminator.parameters()}
    assert all(g is None for g in _gradients(adv, [p for p in _parameters(model) if p not in reached]))
    through_reversal = _gradients(adv, invariant_projection)
    assert all(g.abs().sum() > 0 for g in (*through_reversal, *_gradients(adv, list(discriminator.parameters()))))


def test_invariant_projection_gets_minus_the_gradient_the_discriminator_follows(tiny_table, batch, monkeypatch):
    model = _build("MARN", tiny_table)
    invariant_projection = _parameters(model.fusion.invariant_projection)
    adv = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)["aux_losses"]["adv"]
    through_reversal = _gradients(adv, invariant_projection)

    # the same loss with the reversal layer replaced by the identity: the gradient D1 itself follows
    monkeypatch.setattr("marn.nn.adversarial.reverse_gradient", lambda x, scale: x)
    adv_plain = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)["aux_losses"]["adv"]
    torch.testing.assert_close(adv_plain, adv)
    for reversed_grad, plain_grad in zip(through_reversal, _gradients(adv_plain, invariant_projection)):
        assert plain_grad.abs().sum() > 0
        torch.testing.assert_close(reversed_grad, -plain_grad)


@pytest.mark.parametrize("name", ["BaseModel+MAF+ADV", "MARN"])
def test_discriminator_and_invariant_projection_updates_scale_with_lambda(name, tiny_table, batch):
    model = _build(name, tiny_table)
    discriminator = list((model.adversary.pair_discriminators if name == "BaseModel+MAF+ADV"
                          else model.adversary.modality_discriminator).parameters())
    invariant_projection = _parameters(model.fusion.invariant_projection)

    def total_loss_gradients(weight):
        outputs = model(batch, adversarial_weight=weight)
        total, parts = model.compute_loss(outputs, batch.label)
        return _gradients(total, discriminator), _gradients(total, invariant_projection), parts["ctr"]

    d1_zero, projection_zero, ctr = total_loss_gradients(0.0)
    assert all(g is None or g.abs().max() == 0 for g in d1_zero)  # lambda = 0: D1 does not learn at all
    for g, ctr_only in zip(projection_zero, _gradients(ctr, invariant_projection)):
        torch.testing.assert_close(g, ctr_only)  # and I learns from the CTR loss alone
    d1_small, projection_small, _ = total_loss_gradients(ADVERSARIAL_WEIGHT)
    d1_large, projection_large, _ = total_loss_gradients(3 * ADVERSARIAL_WEIGHT)
    for small, large in zip(d1_small, d1_large):
        assert small.abs().sum() > 0
        torch.testing.assert_close(large, 3 * small)
    for small, large, ctr_only in zip(projection_small, projection_large, projection_zero):
        torch.testing.assert_close(large - ctr_only, 3 * (small - ctr_only))


def test_table3_rows_change_one_thing_each():
    variants = {name: ABLATIONS[name].keywords["variant"] for name in ABLATIONS}
    fields = ("modalities", "fusion", "property_gate", "candidate_attention")

    def changed(first, second):
        return [f for f in fields if getattr(variants[first], f) != getattr(variants[second], f)]

    # the paper's steps; its last, MAF+DDMA -> MARN, is APGRU: the property gate and the candidate attention
    steps = [changed(lower, upper) for lower, upper in zip(TABLE3_LADDER, TABLE3_LADDER[1:])]
    assert steps == [["modalities"], ["fusion"], ["fusion"], ["fusion"], ["property_gate", "candidate_attention"]]
    assert changed("BaseModel+IDs", "BaseModel+IMAGE") == ["modalities"]
    apgru_halves = ("BaseModel+MAF+DDMA+PropertyGate", "BaseModel+MAF+DDMA+CandidateAttention")
    for half in apgru_halves:  # our two extra rows split that step in its halves
        assert len(changed("BaseModel+MAF+DDMA", half)) == 1 and len(changed(half, "MARN")) == 1
    assert changed(*apgru_halves) == ["property_gate", "candidate_attention"]
    assert all(not variants[name].property_gate and not variants[name].candidate_attention
               for name in ABLATIONS if name.startswith("BaseModel+") and name not in apgru_halves)
    assert variants["MARN"].property_gate and variants["MARN"].candidate_attention


def test_base_model_user_vector_is_the_gru_state_at_the_last_real_behaviour(tiny_table, batch):
    model = _build("BaseModel+IDs", tiny_table).eval()
    assert model.candidate_attention is None and model.behaviour_property is None
    gru = torch.nn.GRU(model.sequence.input_size, model.sequence.hidden_size, batch_first=True)
    gru.load_state_dict(model.sequence.state_dict())
    with torch.no_grad():
        candidate, history = encode_batch_items(lambda items: model.encode_items(items)[0], batch)
        states, _ = gru(history)
        rows = torch.arange(len(states))
        last = torch.where(batch.hist_len.unsqueeze(1) > 0, states[rows, (batch.hist_len - 1).clamp(min=0)], 0.0)
        expected = model.prediction(torch.cat([last, candidate], dim=1)).squeeze(1)
        # float32 sums of 64-256 terms in another order (cuDNN-free nn.GRU vs the APGRU op): within 5e-6
        torch.testing.assert_close(model(batch)["logit"], expected, rtol=5e-6, atol=5e-6)


def _with_changed_padding(batch: Batch, extra_steps: int, seed: int) -> Batch:
    """The same samples with random contents in every padded step and `extra_steps` more padded steps."""
    generator = torch.Generator().manual_seed(seed)
    changed = {}
    for key in ("hist_items", "hist_type", "hist_gap", "hist_mask"):
        values = getattr(batch, key)
        changed[key] = torch.cat([values, values.new_zeros(len(batch), extra_steps)], dim=1)
    padded = ~changed["hist_mask"]
    n_padded = int(padded.sum())
    changed["hist_items"][padded] = torch.randint(2, 30, (n_padded,), generator=generator)
    changed["hist_type"][padded] = torch.randint(0, 2, (n_padded,), generator=generator)
    changed["hist_gap"][padded] = torch.randint(0, 6, (n_padded,), generator=generator)
    return dataclasses.replace(batch, **changed)


@pytest.mark.parametrize("name", ["BaseModel+IDs", "BaseModel+MAF+ADV", "MARN"])
def test_padded_steps_change_nothing(name, tiny_table, batch):
    model = _build(name, tiny_table)
    assert (~batch.hist_mask).any(), "the batch must hold padded steps"
    reference = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)
    for seed, extra_steps in ((1, 0), (2, 3)):
        outputs = model(_with_changed_padding(batch, extra_steps, seed), adversarial_weight=ADVERSARIAL_WEIGHT)
        torch.testing.assert_close(outputs["logit"], reference["logit"])
        torch.testing.assert_close(outputs["aux_losses"], reference["aux_losses"])


def test_modality_attention_only_for_fusion_with_attention(tiny_table):
    items = torch.arange(2, 10)
    attention = _build("MARN", tiny_table).modality_attention(items)
    assert list(attention) == ["ids", "image", "title", "statistics"]
    assert all(a.shape == (8, 16) for a in attention.values())
    assert _build("BaseModel+CONC", tiny_table).modality_attention(items) is None


def test_model_folders_are_the_registered_names(tmp_path):
    assert model_folder(tmp_path, "BaseModel+MAF+DDMA") == tmp_path / "BaseModel+MAF+DDMA"
    assert model_file(tmp_path, "MARN") == tmp_path / "MARN" / "model.pt"
    for place in (model_folder, model_file):
        with pytest.raises(ValueError, match="unknown model 'NoSuchModel'"):
            place(tmp_path, "NoSuchModel")


def test_unknown_model_name_is_named(tiny_table):
    with pytest.raises(ValueError, match="unknown model 'MARN2'"):
        build_model("MARN2", tiny_table, tiny_architecture())


def test_models_and_layers_never_import_the_data_package():
    """The item contract they share with marn.data lives in marn.items; marn.data is a floor above them."""
    root = Path(marn.__file__).parent
    for path in [*(root / "models").rglob("*.py"), *(root / "nn").rglob("*.py")]:
        nodes = list(ast.walk(ast.parse(path.read_text())))
        modules = {node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
        modules |= {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
        assert not [m for m in modules if m == "marn.data" or m.startswith("marn.data.")], path
