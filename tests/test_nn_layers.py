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


def test_ddma_adversary_view_gets_minus_the_discriminator_gradient():
    torch.manual_seed(0)
    ddma = DoubleDiscriminatorAdversary(N_MODALITIES, DIM)
    invariant = _invariant_features()
    adversary_view = _invariant_features(seed=1)
    _, losses = ddma(invariant, adversary_view, torch.randn(N_ITEMS, N_MODALITIES, DIM))
    (through_reversal,) = torch.autograd.grad(losses["adv"], adversary_view)

    # what D1 itself sees: the same weighted loss on an input that is not reversed (eq. 7)
    as_d1_sees_it = adversary_view.detach().requires_grad_()
    weights, _ = ddma.invariance_weights(invariant)
    d1_loss = (weights * modality_cross_entropy(ddma.modality_discriminator(as_d1_sees_it))).mean()
    (d1_gradient,) = torch.autograd.grad(d1_loss, as_d1_sees_it)
    torch.testing.assert_close(losses["adv"], d1_loss)
    torch.testing.assert_close(through_reversal, -d1_gradient)
    assert torch.autograd.grad(losses["adv"], invariant, allow_unused=True) == (None,)


def test_ddma_d0_loss_and_weights_give_no_gradient_to_the_invariant_features():
    torch.manual_seed(0)
    ddma = DoubleDiscriminatorAdversary(N_MODALITIES, DIM)
    invariant = _invariant_features()
    _, losses = ddma(invariant, _invariant_features(seed=1), torch.randn(N_ITEMS, N_MODALITIES, DIM))
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
    pooled, losses = ddma(invariant, _invariant_features(seed=1), specific)
    weights, logits = ddma.invariance_weights(invariant)
    torch.testing.assert_close(weights, 1 - logits.softmax(-1).diagonal(dim1=1, dim2=2))
    torch.testing.assert_close(pooled, (weights.unsqueeze(-1) * invariant).amax(dim=1))
    labels = torch.arange(N_MODALITIES).repeat(N_ITEMS)
    expected_ds = F.cross_entropy(ddma.modality_discriminator(specific).reshape(-1, N_MODALITIES), labels)
    torch.testing.assert_close(losses["ds"], expected_ds)
    pooled_eval, no_losses = ddma(invariant, None, None)
    assert no_losses == {}
    torch.testing.assert_close(pooled_eval, pooled)


def test_adv_is_one_binary_discriminator_per_modality_pair_and_max_pools():
    torch.manual_seed(0)
    adversary = CrossModalAdversary(N_MODALITIES, DIM)
    invariant, adversary_view = _invariant_features(), _invariant_features(seed=1)
    pooled, losses = adversary(invariant, adversary_view)
    torch.testing.assert_close(pooled, invariant.amax(dim=1))
    discriminators = adversary.pair_discriminators
    assert discriminators.pairs == [(a, b) for a in range(N_MODALITIES) for b in range(a + 1, N_MODALITIES)]

    # written out pair by pair: D_ab labels c^a as 1 and c^b as 0, averaged over pairs, items and the two sides
    plain = adversary_view.detach().requires_grad_()
    weight, bias = discriminators.classifiers.weight, discriminators.classifiers.bias
    per_pair = []
    for k, (a, b) in enumerate(discriminators.pairs):
        first, second = plain[:, a] @ weight[k] + bias[k], plain[:, b] @ weight[k] + bias[k]
        per_pair.append(F.binary_cross_entropy_with_logits(first, torch.ones(N_ITEMS))
                        + F.binary_cross_entropy_with_logits(second, torch.zeros(N_ITEMS)))
    expected = torch.stack(per_pair).mean() / 2
    torch.testing.assert_close(losses["adv"], expected)
    (through_reversal,) = torch.autograd.grad(losses["adv"], adversary_view)
    (d_gradient,) = torch.autograd.grad(expected, plain)
    torch.testing.assert_close(through_reversal, -d_gradient)
    assert adversary(invariant, None)[1] == {}


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
