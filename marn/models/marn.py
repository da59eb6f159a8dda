"""MARN (paper §3) and the ablations of Table 3 as one model with parts switched by a `MarnVariant`.

Item representations are computed once per batch for the distinct items it references (histories
repeat items), then gathered into the history [B, L, D] and candidate [B, D] positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from marn.data.item_table import ItemTable
from marn.models.base import Architecture, CTRModel, ctr_outputs, pad_history
from marn.nn.adversarial import CrossModalAdversary, DoubleDiscriminatorAdversary
from marn.nn.apgru import APGRU
from marn.nn.candidate_attention import CandidateAttention
from marn.nn.fusion import ModalitySum, MultimodalAttentionFusion
from marn.nn.mlp import MLP
from marn.nn.modality_embedding import BehaviourPropertyEmbedding, ModalityEmbedding

FUSIONS = ("sum", "maf", "maf+adv", "maf+ddma")


@dataclass(frozen=True)
class MarnVariant:
    modalities: tuple[str, ...]
    fusion: str  # sum: element-wise sum; maf: s + max c; maf+adv: s + mean c, ADV; maf+ddma: s + max w c, DDMA
    use_property: bool  # APGRU with behaviour properties, else a plain GRU

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; known: {', '.join(FUSIONS)}")


class MARN(CTRModel):
    def __init__(self, table: ItemTable, architecture: Architecture, variant: MarnVariant):
        super().__init__()
        self.variant = variant
        n_modalities, dim = len(variant.modalities), architecture.hidden
        self.modality_embedding = ModalityEmbedding(table, variant.modalities, architecture.embed_dim,
                                                    architecture.title_filters, architecture.freeze_word_vectors)
        if variant.fusion == "sum":
            self.fusion = ModalitySum(n_modalities, architecture.embed_dim, dim)
        else:
            self.fusion = MultimodalAttentionFusion(n_modalities, architecture.embed_dim, dim)
        if variant.fusion == "maf+ddma":
            self.adversary = DoubleDiscriminatorAdversary(n_modalities, dim)
        elif variant.fusion == "maf+adv":
            self.adversary = CrossModalAdversary(n_modalities, dim)
        else:
            self.adversary = None
        if variant.use_property:
            self.behaviour_property = BehaviourPropertyEmbedding(table.n_behaviour_types, architecture.time_gap_buckets)
            property_size = self.behaviour_property.out_dim
        else:
            self.behaviour_property, property_size = None, 0
        self.sequence = APGRU(dim, dim, property_size, use_property=variant.use_property)
        self.candidate_attention = CandidateAttention(dim, dim)
        self.prediction = MLP(2 * dim, architecture.prediction_mlp, 1)

    def encode_items(self, items: torch.Tensor, adversarial_weight: float = 0.0
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Item representations rep [N, D] and, in training, the adversarial losses computed on these items."""
        embeddings = self.modality_embedding(items)
        if self.variant.fusion == "sum":
            return self.fusion(embeddings), {}
        parts = self.fusion(embeddings)
        if self.variant.fusion == "maf":
            return parts.fused_specific + parts.invariant.amax(dim=1), {}
        if self.variant.fusion == "maf+adv":
            pooled, losses = self.adversary(parts.invariant, adversarial_weight, with_loss=self.training)
        else:
            # Ds trains S_m and the shared discriminator, never the embedding layer: S_m sees e^m detached
            specific_for_ds = self.fusion.specific(embeddings.detach()) if self.training else None
            pooled, losses = self.adversary(parts.invariant, specific_for_ds, adversarial_weight)
        return parts.fused_specific + pooled, losses

    def modality_attention(self, items: torch.Tensor) -> dict[str, torch.Tensor] | None:
        if self.variant.fusion == "sum":
            return None
        attention = self.fusion(self.modality_embedding(items)).attention
        return {m: attention[:, i] for i, m in enumerate(self.variant.modalities)}

    def forward(self, batch: dict[str, torch.Tensor], adversarial_weight: float = 0.0) -> dict:
        target, mask = batch["target_item"], batch["hist_mask"]
        # Encoded once per distinct item (histories repeat items); the adversarial losses come from the same pass.
        distinct, position = torch.unique(torch.cat([target, batch["hist_items"][mask]]), return_inverse=True)
        representations, aux_losses = self.encode_items(distinct, adversarial_weight)
        candidate, history = representations[position[:len(target)]], representations[position[len(target):]]
        states = self.read_history(pad_history(history, mask), batch)
        return ctr_outputs(self.click_logit(states, candidate, mask), aux_losses)

    def read_history(self, history_rep: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """GRU/APGRU states [B, L, H] over the history representations [B, L, H] of `batch`'s behaviours."""
        properties = None
        if self.behaviour_property is not None:
            properties = self.behaviour_property(batch["hist_type"], batch["hist_gap"], batch["hist_mask"])
        states, _ = self.sequence(history_rep, properties, batch["hist_len"])
        return states

    def click_logit(self, states: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logit [B] of each candidate [B, H] given the history states [B, L, H] (candidate attention, then MLP)."""
        user_interest = self.candidate_attention(states, candidate, mask)
        return self.prediction(torch.cat([user_interest, candidate], dim=1)).squeeze(1)
