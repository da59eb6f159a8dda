"""Layers of marn/nn: gradient reversal, the adversarial schemes' gradient flow, fusion, attention, title CNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from marn.nn.adversarial import CrossModalAdversary, DoubleDiscriminatorAdversary, modality_cross_entropy
from marn.nn.candidate_attention import CandidateAttention
from marn.nn.fusion import MultimodalAttentionFusion, PerModalityLinear
from marn.nn.gradient_reversal import reverse_gradient
from marn.nn.title_cnn import TitleCNN

N_ITEMS, N_MODALITIES, DIM = 5, 4, 6


def _invariant_features(seed: int = 0) -> torch.Tensor:
    return torch.randn(N_ITEMS, N_MODALITIES, DIM, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def test_gradient_reversal_is_identity_forward_and_negated_scaled_backward():
    x = torch.randn(3, 4, requires_grad=True)
    upstream = torch.randn(3, 4)
    y = reverse_gradient(x, 0.3)
    torch.testing.assert_close(y, x)
    (grad,) = torch.autograd.grad(y, x, upstream)
    torch.testing.assert_close(grad, -0.3 * upstream)


@pytest.mark.parametrize("weight", [0.0, 0.01, 0.05])
def test_ddma_invariant_features_get_minus_lambda_times_the_discriminator_gradient(weight):
    torch.manual_seed(0)
    ddma = DoubleDiscriminatorAdversary(N_MODALITIES, DIM)
    invariant = _invariant_features()
    specific = torch.randn(N_ITEMS, N_MODALITIES, DIM)
    _, losses = ddma(invariant, specific, weight)
    (through_reversal,) = torch.autograd.grad(losses["adv"], invariant)

    # what D1 itself sees: the same weighted loss on an input that is not reversed
    as_d1_sees_it = invariant.detach().requires_grad_()
    weights, _ = ddma.invariance_weights(as_d1_sees_it)
    d1_loss = (weights * modality_cross_entropy(ddma.modality_discriminator(as_d1_sees_it))).mean()
    (d1_gradient,) = torch.autograd.grad(d1_loss, as_d1_sees_it)
    torch.testing.assert_close(losses["adv"], d1_loss)
    torch.testing.assert_close(through_reversal, -weight * d1_gradient)


def test_ddma_d0_loss_and_weights_give_no_gradient_to_the_invariant_features():
    torch.manual_seed(0)
    ddma = DoubleDiscriminatorAdversary(N_MODALITIES, DIM)
    invariant = _invariant_features()
    _, losses = ddma(invariant, torch.randn(N_ITEMS, N_MODALITIES, DIM), 0.05)
    assert losses["d0"].grad_fn is not None
    assert torch.autograd.grad(losses["d0"], invariant, allow_unused=True) == (None,)
    weights, _ = ddma.invariance_weights(invariant)
    assert not weights.requires_grad
    d0_grads = torch.autograd.grad(losses["d0"], list(ddma.invariance_discriminator.parameters()))
    assert all(g.abs().sum() > 0 for g in d0_grads)


def test_ddma_pools_the_weighted_max_and_ds_shares_d1_matrix():
    torch.manual_seed(0)
    ddma = DoubleDiscriminatorAdversary(N_MODALITIES, DIM)
    invariant = _invariant_features()
    specific = torch.randn(N_ITEMS, N_MODALITIES, DIM, requires_grad=True)
    pooled, losses = ddma(invariant, specific, 0.05)
    weights, logits = ddma.invariance_weights(invariant)
    torch.testing.assert_close(weights, 1 - logits.softmax(-1).diagonal(dim1=1, dim2=2))
    torch.testing.assert_close(pooled, (weights.unsqueeze(-1) * invariant).amax(dim=1))
    labels = torch.arange(N_MODALITIES).repeat(N_ITEMS)
    expected_ds = 0.05 * F.cross_entropy(ddma.modality_discriminator(specific).reshape(-1, N_MODALITIES), labels)
    torch.testing.assert_close(losses["ds"], expected_ds)
    pooled_eval, no_losses = ddma(invariant, None, 0.05)
    assert no_losses == {}
    torch.testing.assert_close(pooled_eval, pooled)


def test_adv_reverses_the_unweighted_discriminator_gradient_and_mean_pools():
    torch.manual_seed(0)
    adversary = CrossModalAdversary(N_MODALITIES, DIM)
    invariant = _invariant_features()
    pooled, losses = adversary(invariant, 0.04, with_loss=True)
    torch.testing.assert_close(pooled, invariant.mean(dim=1))
    (through_reversal,) = torch.autograd.grad(losses["adv"], invariant)
    plain = invariant.detach().requires_grad_()
    (d_gradient,) = torch.autograd.grad(modality_cross_entropy(adversary.modality_discriminator(plain)).mean(), plain)
    torch.testing.assert_close(through_reversal, -0.04 * d_gradient)


def test_per_modality_linear_applies_each_modality_its_own_map():
    layer = PerModalityLinear(3, 4, 5)
    x = torch.randn(7, 3, 4)
    expected = torch.stack([x[:, m] @ layer.weight[m] + layer.bias[m] for m in range(3)], dim=1)
    torch.testing.assert_close(layer(x), expected)


def test_maf_attention_weights_the_specific_features():
    torch.manual_seed(0)
    maf = MultimodalAttentionFusion(N_MODALITIES, 3, DIM)
    parts = maf(torch.randn(N_ITEMS, N_MODALITIES, 3))
    assert parts.attention.abs().max() <= 1
    torch.testing.assert_close(parts.fused_specific, (parts.attention * parts.specific).sum(dim=1))
    assert (parts.specific >= 0).all() and (parts.invariant >= 0).all()


def test_candidate_attention_ignores_padded_steps_and_zeroes_empty_histories():
    torch.manual_seed(0)
    attention = CandidateAttention(4, 3, hidden=8)
    states = torch.randn(3, 5, 4)
    candidate = torch.randn(3, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    user_interest = attention(states, candidate, mask)
    changed = states.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 4) * 100
    torch.testing.assert_close(attention(changed, candidate, mask), user_interest)
    torch.testing.assert_close(user_interest[2], torch.zeros(4))
    assert torch.isfinite(user_interest).all()


def test_title_cnn_max_pools_each_window_over_time():
    vectors = torch.randn(10, 6)
    vectors[0] = 0
    cnn = TitleCNN(vectors, freeze=True, filters=3)
    ids = torch.tensor([[2, 3, 4, 5, 0, 0], [9, 8, 0, 0, 0, 0]])
    out = cnn(ids)
    assert out.shape == (2, 9) and not cnn.word_vectors.weight.requires_grad
    words = vectors[ids].transpose(1, 2)
    expected = torch.cat([F.relu(conv(words)).amax(dim=2) for conv in cnn.convolutions], dim=1)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="shorter than the widest window 4"):
        cnn(ids[:, :3])
    assert TitleCNN(vectors, freeze=False, filters=3).word_vectors.weight.requires_grad


@pytest.mark.parametrize("ids", [
    [[2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0], [9, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0] * 12],  # padding trimmed
    [[2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5], [9, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0] * 12],  # one full title
    [[0] * 12, [0] * 12],  # no words at all
])
def test_title_cnn_equals_the_convolutions_in_value_and_gradient(ids):
    torch.manual_seed(0)
    vectors = torch.randn(10, 6)
    vectors[0] = 0
    cnn = TitleCNN(vectors, freeze=True, filters=3)
    cnn.convolutions[1].bias.data.fill_(5.0)  # a max at an all-padding window, which the trimmed titles must keep
    ids = torch.tensor(ids)
    upstream = torch.randn(len(ids), 9)
    words = vectors[ids].transpose(1, 2)
    expected = torch.cat([F.relu(conv(words)).amax(dim=2) for conv in cnn.convolutions], dim=1)
    expected_grads = torch.autograd.grad(expected, list(cnn.convolutions.parameters()), upstream)
    out = cnn(ids)
    grads = torch.autograd.grad(out, list(cnn.convolutions.parameters()), upstream)
    # float32 defaults: the same products summed in another order (per offset, then over offsets)
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)
