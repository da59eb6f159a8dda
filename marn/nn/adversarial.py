"""Modality discriminators and the two adversarial schemes that pool the invariant features c^m.

- `DoubleDiscriminatorAdversary` (DDMA, paper §3.3.2-3.3.3): D0 estimates how modality-invariant each
  c^m is, D1 plays the minimax game with the invariant projection through gradient reversal, weighted by
  D0 (eq. 7), and Ds (D1's matrix applied to s^m) keeps the specific features modality-discriminable.
- `CrossModalAdversary` (ADV, the original cross-modal adversarial scheme): one discriminator through
  gradient reversal on unweighted c^m, mean pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from marn.nn.gradient_reversal import reverse_gradient


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

    def forward(self, invariant: torch.Tensor, specific_of_detached_input: torch.Tensor | None,
                adversarial_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Pooled c = max_m(w^m c^m) [N, D] and, when `specific_of_detached_input` (s^m computed from
        detached e^m) is given, the losses `d0`, `adv` (eq. 7, through the reversal) and `ds`."""
        weights, invariance_logits = self.invariance_weights(invariant)
        pooled = (weights.unsqueeze(-1) * invariant).amax(dim=1)
        if specific_of_detached_input is None:
            return pooled, {}
        adversarial_logits = self.modality_discriminator(reverse_gradient(invariant, adversarial_weight))
        specific_logits = self.modality_discriminator(specific_of_detached_input)
        return pooled, {
            "d0": modality_cross_entropy(invariance_logits).mean(),
            "adv": (weights * modality_cross_entropy(adversarial_logits)).mean(),
            "ds": adversarial_weight * modality_cross_entropy(specific_logits).mean(),
        }


class CrossModalAdversary(nn.Module):
    def __init__(self, n_modalities: int, dim: int):
        super().__init__()
        self.modality_discriminator = ModalityDiscriminator(dim, n_modalities)

    def forward(self, invariant: torch.Tensor, adversarial_weight: float, with_loss: bool
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean-pooled c [N, D] and, when asked, the unweighted adversarial loss `adv`."""
        pooled = invariant.mean(dim=1)
        if not with_loss:
            return pooled, {}
        logits = self.modality_discriminator(reverse_gradient(invariant, adversarial_weight))
        return pooled, {"adv": modality_cross_entropy(logits).mean()}
