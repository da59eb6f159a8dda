"""MARN (paper §3) and the ablations of Table 3 as one model with parts switched by a `MarnVariant`.

BaseModel (§4.5) reads the behaviours with a plain GRU and takes the state at the last real behaviour
as the user vector; APGRU (§3.4.1) is two changes to it, the property-gated update and the candidate
attention over the states, switched separately so Table 3 can split APGRU's gain. The variant is
resolved once, at construction.

Item representations are computed once per batch for the distinct items it references (histories
repeat items), then gathered into the history [B, L, D] and candidate [B, D] positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from marn.batch import Batch
from marn.items import ItemTable
from marn.models.base import Architecture, CTRModel, ctr_outputs, pad_history
from marn.nn.adversarial import ADVERSARIAL_LOSSES, CrossModalAdversary, DoubleDiscriminatorAdversary
from marn.nn.apgru import APGRU
from marn.nn.candidate_attention import CandidateAttention
from marn.nn.fusion import ModalitySum, MultimodalAttentionFusion
from marn.nn.mlp import MLP
from marn.nn.modality_embedding import BehaviourPropertyEmbedding, ModalityEmbedding

ItemLosses = tuple[torch.Tensor, dict[str, torch.Tensor]]
ADVERSARIES = {"maf": None, "maf+adv": CrossModalAdversary, "maf+ddma": DoubleDiscriminatorAdversary}
FUSIONS = ("sum", *ADVERSARIES)


@dataclass(frozen=True)
class MarnVariant:
    modalities: tuple[str, ...]
    fusion: str  # sum: element-wise sum (CONC); maf: s + max c; maf+adv: the same with ADV; maf+ddma: s + max w c, DDMA
    property_gate: bool = False  # APGRU's update gate reads the behaviour properties (type, time gap)
    candidate_attention: bool = False  # the user vector attends over the states, else the last real state

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
        # the fusion variant is resolved here once: `fuse` is the one path encode_items takes
        if variant.fusion == "sum":
            self.fusion = ModalitySum(n_modalities, architecture.embed_dim, dim)
            self.adversary = None
            self.fuse: Callable[[torch.Tensor], ItemLosses] = self._fuse_by_sum
        else:
            self.fusion = MultimodalAttentionFusion(n_modalities, architecture.embed_dim, dim)
            adversary = ADVERSARIES[variant.fusion]
            self.adversary = adversary(n_modalities, dim) if adversary is not None else None
            self.fuse = self._fuse_by_max if adversary is None else self._fuse_adversarially
        if variant.property_gate:
            self.behaviour_property = BehaviourPropertyEmbedding(table.n_behaviour_types, architecture.time_gap_buckets)
            property_size = self.behaviour_property.out_dim
        else:
            self.behaviour_property, property_size = None, 0
        self.sequence = APGRU(dim, dim, property_size, use_property=variant.property_gate)
        self.candidate_attention = CandidateAttention(dim, dim) if variant.candidate_attention else None
        self.prediction = MLP(2 * dim, architecture.prediction_mlp, 1)

    def encode_items(self, items: torch.Tensor) -> ItemLosses:
        """Item representations rep [N, D] and, in training, the adversarial losses computed on these items."""
        return self.fuse(self.modality_embedding(items))

    def _fuse_by_sum(self, embeddings: torch.Tensor) -> ItemLosses:
        return self.fusion(embeddings), {}

    def _fuse_by_max(self, embeddings: torch.Tensor) -> ItemLosses:
        parts = self.fusion(embeddings)
        return parts.fused_specific + parts.invariant.amax(dim=1), {}

    def _fuse_adversarially(self, embeddings: torch.Tensor) -> ItemLosses:
        parts = self.fusion(embeddings)
        # the adversarial losses exist in training only; in eval the adversary only pools c^m
        views = self.adversary.views(self.fusion, embeddings) if self.training else ()
        pooled, losses = self.adversary(parts.invariant, *views)
        return parts.fused_specific + pooled, losses

    def modality_attention(self, items: torch.Tensor) -> dict[str, torch.Tensor] | None:
        if not isinstance(self.fusion, MultimodalAttentionFusion):
            return None
        attention = self.fusion(self.modality_embedding(items)).attention
        return {m: attention[:, i] for i, m in enumerate(self.variant.modalities)}

    def forward(self, batch: Batch, adversarial_weight: float = 0.0) -> dict:
        target, mask = batch.target_item, batch.hist_mask
        # Encoded once per distinct item (histories repeat items); the adversarial losses come from the same pass.
        distinct, position = torch.unique(torch.cat([target, batch.hist_items[mask]]), return_inverse=True)
        representations, aux_losses = self.encode_items(distinct)
        candidate, history = representations[position[:len(target)]], representations[position[len(target):]]
        states, last_state = self.read_history(pad_history(history, mask), batch)
        logit = self.click_logit(states, last_state, candidate, mask)
        weights = {name: adversarial_weight for name in ADVERSARIAL_LOSSES if name in aux_losses}
        return ctr_outputs(logit, aux_losses, weights)

    def read_history(self, history_rep: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """GRU/APGRU states [B, L, H] over the history representations [B, L, H] of `batch`'s behaviours, and
        the state after each history's last real behaviour [B, H] (zero for an empty history)."""
        properties = None
        if self.behaviour_property is not None:
            properties = self.behaviour_property(batch.hist_type, batch.hist_gap, batch.hist_mask)
        return self.sequence(history_rep, properties, batch.hist_len)

    def click_logit(self, states: torch.Tensor, last_state: torch.Tensor, candidate: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        """Logit [B] of each candidate [B, H]: the user vector (candidate attention over the states [B, L, H],
        or the last real state [B, H] for BaseModel) and the candidate through the prediction MLP."""
        if self.candidate_attention is not None:
            user = self.candidate_attention(states, candidate, mask)
        else:
            user = last_state
        return self.prediction(torch.cat([user, candidate], dim=1)).squeeze(1)
