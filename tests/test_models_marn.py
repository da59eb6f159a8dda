"""MARN and its ablations assembled: outputs, gradient flow on the whole autograd graph, padding, registry."""

from __future__ import annotations

import pytest
import torch
from test_models_data import tiny_config, tiny_data  # noqa: F401  (tiny_data is a fixture)

from marn.data.dataset import CTRDataset
from marn.data.item_table import load_item_table
from marn.models.base import Architecture
from marn.models.baselines import BASELINES
from marn.models.registry import MODELS, build_model, model_folder

ADVERSARIAL_WEIGHT = 0.04


@pytest.fixture(scope="module")
def table(tiny_data):  # noqa: F811
    return load_item_table(tiny_data.prepared_dir, tiny_data.features_dir)


@pytest.fixture(scope="module")
def batch(tiny_data):  # noqa: F811
    dataset = CTRDataset(tiny_data.prepared_dir, "train", max_len=6, time_gap_buckets=6)
    return dataset.__getitems__(list(range(0, 40, 2)))


def _build(name, table, seed=0):
    torch.manual_seed(seed)
    return build_model(name, table, Architecture.from_config(tiny_config())).train()


def _parameters(module):
    return [p for p in module.parameters() if p.requires_grad]


@pytest.mark.parametrize("name", [name for name in MODELS if name not in BASELINES])  # baselines: test_baselines.py
def test_every_model_returns_probabilities_and_its_own_losses(name, table, batch):
    model = _build(name, table)
    outputs = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)
    assert outputs["logit"].shape == outputs["prob"].shape == batch["label"].shape
    torch.testing.assert_close(outputs["prob"], torch.sigmoid(outputs["logit"]))
    expected = {"maf+ddma": {"d0", "adv", "ds"}, "maf+adv": {"adv"}}.get(model.variant.fusion, set())
    assert set(outputs["aux_losses"]) == expected
    total, parts = model.compute_loss(outputs, batch["label"])
    torch.testing.assert_close(total, sum(parts.values()))
    assert model.eval()(batch)["aux_losses"] == {}


def test_d0_loss_reaches_neither_the_invariant_projection_nor_the_embeddings(table, batch):
    model = _build("MARN", table)
    d0 = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)["aux_losses"]["d0"]
    untouched = _parameters(model.fusion) + _parameters(model.modality_embedding)
    assert all(g is None for g in torch.autograd.grad(d0, untouched, allow_unused=True, retain_graph=True))
    d0_grads = torch.autograd.grad(d0, _parameters(model.adversary.invariance_discriminator))
    assert all(g.abs().sum() > 0 for g in d0_grads)


def test_ds_loss_trains_specific_projections_and_discriminator_but_not_the_embeddings(table, batch):
    model = _build("MARN", table)
    ds = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)["aux_losses"]["ds"]
    embedding_grads = torch.autograd.grad(ds, _parameters(model.modality_embedding), allow_unused=True,
                                          retain_graph=True)
    assert all(g is None for g in embedding_grads)
    trained = [model.fusion.specific_projection.weight, model.adversary.modality_discriminator.classifier.weight]
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(ds, trained))


def test_invariant_projection_gets_minus_lambda_times_d1_gradient(table, batch, monkeypatch):
    model = _build("MARN", table)
    invariant_projection = _parameters(model.fusion.invariant_projection)
    adv = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)["aux_losses"]["adv"]
    through_reversal = torch.autograd.grad(adv, invariant_projection)

    # the same loss with the reversal layer replaced by the identity: the gradient D1 itself follows
    monkeypatch.setattr("marn.nn.adversarial.reverse_gradient", lambda x, scale: x)
    adv_plain = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)["aux_losses"]["adv"]
    torch.testing.assert_close(adv_plain, adv)
    for reversed_grad, plain_grad in zip(through_reversal, torch.autograd.grad(adv_plain, invariant_projection)):
        assert plain_grad.abs().sum() > 0
        torch.testing.assert_close(reversed_grad, -ADVERSARIAL_WEIGHT * plain_grad)


def _with_changed_padding(batch, extra_steps: int, seed: int) -> dict:
    """The same samples with random contents in every padded step and `extra_steps` more padded steps."""
    generator = torch.Generator().manual_seed(seed)
    changed = {k: v.clone() for k, v in batch.items()}
    for key in ("hist_items", "hist_type", "hist_gap", "hist_mask"):
        pad = torch.zeros(batch[key].shape[0], extra_steps, dtype=batch[key].dtype)
        changed[key] = torch.cat([changed[key], pad], dim=1)
    padded = ~changed["hist_mask"]
    n_padded = int(padded.sum())
    changed["hist_items"][padded] = torch.randint(2, 30, (n_padded,), generator=generator)
    changed["hist_type"][padded] = torch.randint(0, 2, (n_padded,), generator=generator)
    changed["hist_gap"][padded] = torch.randint(0, 6, (n_padded,), generator=generator)
    return changed


@pytest.mark.parametrize("name", ["BaseModel+IDs", "BaseModel+MAF+ADV", "MARN"])
def test_padded_steps_change_nothing(name, table, batch):
    model = _build(name, table)
    assert (~batch["hist_mask"]).any(), "the batch must hold padded steps"
    reference = model(batch, adversarial_weight=ADVERSARIAL_WEIGHT)
    for seed, extra_steps in ((1, 0), (2, 3)):
        outputs = model(_with_changed_padding(batch, extra_steps, seed), adversarial_weight=ADVERSARIAL_WEIGHT)
        torch.testing.assert_close(outputs["logit"], reference["logit"])
        torch.testing.assert_close(outputs["aux_losses"], reference["aux_losses"])


def test_modality_attention_only_for_fusion_with_attention(table):
    items = torch.arange(2, 10)
    attention = _build("MARN", table).modality_attention(items)
    assert list(attention) == ["ids", "image", "title", "statistics"]
    assert all(a.shape == (8, 16) for a in attention.values())
    assert _build("BaseModel+CONC", table).modality_attention(items) is None


def test_model_folders_are_the_registered_names(tmp_path):
    assert model_folder(tmp_path, "BaseModel+MAF+DDMA") == tmp_path / "BaseModel+MAF+DDMA"
    with pytest.raises(ValueError, match="unknown model 'NoSuchModel'"):
        model_folder(tmp_path, "NoSuchModel")


def test_unknown_model_name_is_named(table):
    with pytest.raises(ValueError, match="unknown model 'MARN2'"):
        build_model("MARN2", table, Architecture.from_config(tiny_config()))
