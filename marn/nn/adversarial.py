"""Modality discriminators and the two adversarial schemes that pool the invariant features c^m.

- `CrossModalAdversary` (ADV, Table 3): the original adversarial transfer network of Wang et al.
  (ACM MM 2017, the paper's [30]) in its one-to-one paradigm (eq. 4): one binary discriminator per pair of
  modalities tells which of the two a feature came from, trained against the invariant projection I
  through gradient reversal. c^m is pooled by max, as MAF and DDMA pool it, so MAF -> ADV -> DDMA each
  change one thing.
- `DoubleDiscriminatorAdversary` (DDMA, paper §3.3.2-3.3.3): the multimodal extension. D0 (an M-class
  discriminator on detached c^m) estimates how modality-invariant each c^m is; D1 (M-class) plays the
  minimax game with I through gradient reversal, its loss weighted by w^m = 1 - D0^m(c^m) (eq. 7); Ds
  (D1's matrix applied to s^m) keeps the specific features modality-discriminable. c = max_m w^m c^m.

Gradient routing of eq. 10 (`min_I max_D1 lambda * L_ADV`): the adversarial losses are computed on
`adversary_view`, c^m recomputed by I from *detached* modality embeddings (each adversary's `views`), so
the reversed gradient reaches I and nothing below it; the reversal has scale 1 and the caller multiplies
`adv` (and `ds`) by lambda (`ADVERSARIAL_LOSSES`), so D1's own update scales with lambda too.
`specific_view` is s^m of detached embeddings: L_Ds trains Ds and S_m, never the embedding layer. L_D0
trains D0 only.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from marn.nn.fusion import MultimodalAttentionFusion
from marn.nn.gradient_reversal import reverse_gradient

ADVERSARIAL_LOSSES = ("adv", "ds")  # the losses eq. 10 weighs by lambda; d0 is unweighted


class ModalityDiscriminator(nn.Module):
    """Features [N, M, D] to logits [N, M, M] over which modality each feature came from."""

    def __init__(self, dim: int, n_modalities: int):
        super().__init__()
        self.classifier = nn.Linear(dim, n_modalities)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


def modality_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-feature cross-entropy [N, M] of logits [N, M, M] against each feature's own modality."""
    n, m, _ = logits.shape
    labels = torch.arange(m, device=logits.device).expand(n, m)
    return F.cross_entropy(logits.reshape(n * m, m), labels.reshape(-1), reduction="none").view(n, m)


class PairwiseModalityDiscriminators(nn.Module):
    """One binary discriminator per modality pair (a, b), a < b: logit > 0 reads "from a", < 0 "from b"."""

    def __init__(self, dim: int, n_modalities: int):
        super().__init__()
        if n_modalities < 2:
            raise ValueError(f"pairwise discriminators need at least 2 modalities, got {n_modalities}")
        self.pairs = list(itertools.combinations(range(n_modalities), 2))
        self.classifiers = nn.Linear(dim, len(self.pairs))  # column k is the discriminator of pairs[k]

    def loss(self, features: torch.Tensor) -> torch.Tensor:
        """Mean over pairs and items of the binary cross-entropy of each pair's two features [N, M, D]."""
        first, second = (torch.tensor(side, device=features.device) for side in zip(*self.pairs))
        pair_index = torch.arange(len(self.pairs), device=features.device)
        first_logits = self.classifiers(features[:, first])[:, pair_index, pair_index]  # D_k on c^{a_k}: [N, K]
        second_logits = self.classifiers(features[:, second])[:, pair_index, pair_index]
        return 0.5 * (F.binary_cross_entropy_with_logits(first_logits, torch.ones_like(first_logits))
                      + F.binary_cross_entropy_with_logits(second_logits, torch.zeros_like(second_logits)))


class CrossModalAdversary(nn.Module):
    def __init__(self, n_modalities: int, dim: int):
        super().__init__()
        self.pair_discriminators = PairwiseModalityDiscriminators(dim, n_modalities)

    def views(self, fusion: MultimodalAttentionFusion, embeddings: torch.Tensor) -> tuple[torch.Tensor]:
        """The training view: c^m of the detached modality embeddings [N, M, D]."""
        return (fusion.invariant(embeddings.detach()),)

    def forward(self, invariant: torch.Tensor, adversary_view: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Max-pooled c [N, D] and, when `adversary_view` is given, the one-to-one adversarial loss `adv`."""
        pooled = invariant.amax(dim=1)
        if adversary_view is None:
            return pooled, {}
        return pooled, {"adv": self.pair_discriminators.loss(reverse_gradient(adversary_view, 1.0))}


class DoubleDiscriminatorAdversary(nn.Module):
    def __init__(self, n_modalities: int, dim: int):
        super().__init__()
        self.invariance_discriminator = ModalityDiscriminator(dim, n_modalities)  # D0
        self.modality_discriminator = ModalityDiscriminator(dim, n_modalities)  # D1, and Ds by sharing its matrix

    def invariance_weights(self, invariant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w^m = 1 - D0^m(c^m), detached, and D0's logits; D0 sees c^m detached so it never trains I."""
        logits = self.invariance_discriminator(invariant.detach())
        own_modality_probability = logits.softmax(dim=-1).diagonal(dim1=1, dim2=2)
        return (1.0 - own_modality_probability).detach(), logits

    def views(self, fusion: MultimodalAttentionFusion, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training views: c^m and s^m of the detached modality embeddings [N, M, D]."""
        detached = embeddings.detach()
        return fusion.invariant(detached), fusion.specific(detached)

    def forward(self, invariant: torch.Tensor, adversary_view: torch.Tensor | None = None,
                specific_view: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Pooled c = max_m(w^m c^m) [N, D] and, when the two views are given (training), the losses `d0`,
        `adv` (eq. 7, through the reversal) and `ds`, none of them weighted by lambda yet."""
        weights, invariance_logits = self.invariance_weights(invariant)
        pooled = (weights.unsqueeze(-1) * invariant).amax(dim=1)
        if adversary_view is None or specific_view is None:
            return pooled, {}
        adversarial_logits = self.modality_discriminator(reverse_gradient(adversary_view, 1.0))
        specific_logits = self.modality_discriminator(specific_view)
        return pooled, {
            "d0": modality_cross_entropy(invariance_logits).mean(),
            "adv": (weights * modality_cross_entropy(adversarial_logits)).mean(),
            "ds": modality_cross_entropy(specific_logits).mean(),
        }
