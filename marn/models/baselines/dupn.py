"""DUPN (Ni et al., 2018, "Perceive Your Users in Depth"): an LSTM over behaviours and properties, then attention."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from marn.batch import Batch
from marn.items import ItemTable
from marn.models.base import Architecture, CTRModel, ctr_outputs, encode_batch_items
from marn.models.baselines.common import ConcatenatedModalities
from marn.nn.candidate_attention import CandidateAttention
from marn.nn.mlp import MLP
from marn.nn.modality_embedding import BehaviourPropertyEmbedding


class DUPN(CTRModel):
    """Behaviour t enters the LSTM as [item vector, behaviour property] (type and time-gap embeddings, the
    properties MARN's APGRU reads); attention over the LSTM states, then the prediction MLP on
    [user, candidate]. Choices: DUPN's attention query is the search query and user profile; in this CTR
    setting there is no query, so the candidate item is the query (`CandidateAttention`). Items are MARN's
    four modality embeddings concatenated; one LSTM layer of `train.hidden` units; no multi-task heads.
    """

    def __init__(self, table: ItemTable, architecture: Architecture):
        super().__init__()
        self.items = ConcatenatedModalities(table, architecture)
        self.behaviour_property = BehaviourPropertyEmbedding(table.n_behaviour_types, architecture.time_gap_buckets)
        self.lstm = nn.LSTM(self.items.out_dim + self.behaviour_property.out_dim, architecture.hidden, batch_first=True)
        self.attention = CandidateAttention(architecture.hidden, self.items.out_dim)
        self.prediction = MLP(architecture.hidden + self.items.out_dim, architecture.prediction_mlp, 1)

    def forward(self, batch: Batch, adversarial_weight: float = 0.0) -> dict:
        mask = batch.hist_mask
        candidate, history = encode_batch_items(self.items, batch)
        properties = self.behaviour_property(batch.hist_type, batch.hist_gap, mask)
        # pack_padded_sequence rejects length 0; such a row's attention is all padding, so its user vector is 0
        lengths = batch.hist_len.clamp(min=1).cpu()
        packed = pack_padded_sequence(torch.cat([history, properties], dim=2), lengths, batch_first=True,
                                      enforce_sorted=False)
        states, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=mask.shape[1])
        user = self.attention(states, candidate, mask)
        return ctr_outputs(self.prediction(torch.cat([user, candidate], dim=1)).squeeze(1))
