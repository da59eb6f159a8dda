"""DIEN (Zhou et al., 2019): a GRU interest extractor trained with an auxiliary loss, then AUGRU interest evolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from marn.batch import Batch
from marn.items import RESERVED_ENTRIES, ItemTable
from marn.models.base import Architecture, CTRModel, ctr_outputs, encode_distinct, pad_history
from marn.models.baselines.common import ConcatenatedModalities
from marn.nn.apgru import APGRU
from marn.nn.augru import AUGRU
from marn.nn.mlp import MLP
from marn.nn.pooling import masked_softmax

AUX_LOSS_WEIGHT = 1.0  # DIEN's alpha, the value of its experiments


def auxiliary_loss(states: torch.Tensor, history: torch.Tensor, negatives: torch.Tensor, pairs: torch.Tensor
                   ) -> torch.Tensor:
    """DIEN eq. 1-2: h_t should give the next behaviour e_{t+1} a high inner product and a sampled item a low
    one. states, history [B, L, D]; pairs [B, L-1] true where steps t and t+1 are both real behaviours;
    negatives [n_pairs, D] in the order of pairs' true entries. The mean is over real pairs only."""
    if not pairs.any():
        return states.new_zeros(())
    current = states[:, :-1][pairs]
    positive_logit = (current * history[:, 1:][pairs]).sum(dim=1)
    negative_logit = (current * negatives).sum(dim=1)
    return (F.binary_cross_entropy_with_logits(positive_logit, torch.ones_like(positive_logit))
            + F.binary_cross_entropy_with_logits(negative_logit, torch.zeros_like(negative_logit)))


class DIEN(CTRModel):
    """Items are MARN's four modality embeddings concatenated (dimension D). Interest extractor: a GRU with D
    units (so eq. 1's inner product <h_t, e_{t+1}> is defined), sequence-masked. Interest evolving: attention
    a_t = softmax over real steps of h_t W e_candidate (eq. 5), and an AUGRU whose final state, with the
    candidate, feeds the prediction MLP. Choices: the negative of step t+1 is drawn uniformly from the
    catalogue at every training step (the original reads a logged non-clicked item; a draw of the clicked
    item itself, chance 1/items, is kept); the auxiliary loss is added in training only, with weight 1.
    Padding enters neither the auxiliary loss nor the attention, unlike public implementations that average
    the loss over padded steps or score padded steps before the softmax.
    """

    def __init__(self, table: ItemTable, architecture: Architecture):
        super().__init__()
        self.items = ConcatenatedModalities(table, architecture)
        dim = self.items.out_dim
        self.n_items = table.n_items
        self.interest_extractor = APGRU(dim, dim, property_size=0, use_property=False)
        self.attention = nn.Linear(dim, dim, bias=False)
        self.interest_evolution = AUGRU(dim, dim)
        self.prediction = MLP(2 * dim, architecture.prediction_mlp, 1)

    def forward(self, batch: Batch, adversarial_weight: float = 0.0) -> dict:
        target, history, mask = batch.target_item, batch.hist_items, batch.hist_mask
        pairs = mask[:, 1:] & mask[:, :-1]
        item_sets = [target, history[mask]]
        if self.training:
            negatives = torch.randint(RESERVED_ENTRIES, self.n_items, pairs.shape, device=target.device)
            item_sets.append(negatives[pairs])
        candidate, valid_history, *negative = encode_distinct(self.items, *item_sets)
        behaviours = pad_history(valid_history, mask)
        states, _ = self.interest_extractor(behaviours, None, batch.hist_len)
        aux_losses = {}
        if self.training:
            aux_losses["aux"] = AUX_LOSS_WEIGHT * auxiliary_loss(states, behaviours, negative[0], pairs)
        scores = (states * self.attention(candidate).unsqueeze(1)).sum(dim=2)
        interest = self.interest_evolution(states, masked_softmax(scores, mask, dim=1))
        return ctr_outputs(self.prediction(torch.cat([interest, candidate], dim=1)).squeeze(1), aux_losses)
