"""What every CTR model here shares: the sizes it is built with and the one hook for extra losses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from marn.batch import Batch
from marn.config import DataConfig, TrainConfig

LOSS_NAMES = ("ctr", "ds", "d0", "adv", "aux")  # eq. 10: L = L_CTR + L_Ds + L_D0 + L_ADV; aux: DIEN's auxiliary loss


@dataclass(frozen=True)
class Architecture:
    """Model sizes, read from the `train` section (and `data.time_gap_buckets`) and saved with the weights."""

    embed_dim: int  # common size of the modality embeddings e^m
    hidden: int  # size of s^m, c^m, the item representation and the GRU state
    title_filters: int  # convolution filters per title window
    freeze_word_vectors: bool
    prediction_mlp: tuple[int, ...]
    time_gap_buckets: int

    @classmethod
    def from_config(cls, train: TrainConfig, data: DataConfig) -> Architecture:
        return cls(embed_dim=train.embed_dim, hidden=train.hidden, title_filters=train.title_filters,
                   freeze_word_vectors=train.freeze_word_vectors, prediction_mlp=tuple(train.prediction_mlp),
                   time_gap_buckets=data.time_gap_buckets)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> Architecture:
        return cls(**{**values, "prediction_mlp": tuple(values["prediction_mlp"])})


class CTRModel(nn.Module):
    """`forward(batch, adversarial_weight)` returns `{"logit": [B], "prob": [B], "aux_losses": {name: scalar},
    "loss_weights": {name: float}}`.

    `aux_losses` is the one place where a model adds losses beyond the CTR loss (discriminators,
    adversarial terms); they are computed in training mode only. `compute_loss` sums them, each times its
    weight in `loss_weights` (1 when absent: eq. 10's lambda on L_ADV), and returns them unweighted for the log.
    """

    def compute_loss(self, outputs: dict, label: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {"ctr": F.binary_cross_entropy_with_logits(outputs["logit"], label), **outputs["aux_losses"]}
        unknown = set(parts) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"{type(self).__name__} returned losses {sorted(unknown)} outside {LOSS_NAMES}")
        weights = outputs.get("loss_weights", {})
        return torch.stack([weights.get(name, 1.0) * loss for name, loss in parts.items()]).sum(), parts

    def modality_attention(self, items: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """{modality: atten^m [N, D]} of the given items, for models with attention over modalities; else None."""
        return None


def encode_distinct(encode: Callable[[torch.Tensor], torch.Tensor], *item_sets: torch.Tensor) -> list[torch.Tensor]:
    """encode(items [N]) -> [N, ...] run once on the distinct items of the 1-D `item_sets` (histories repeat
    items); returns one [len(set), ...] tensor per set."""
    distinct, position = torch.unique(torch.cat(item_sets), return_inverse=True)
    return list(encode(distinct)[position].split([len(items) for items in item_sets]))


def pad_history(valid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Representations of the valid history steps [n_valid, ...] placed into [B, L, ...], zero at padding."""
    padded = valid.new_zeros(*mask.shape, *valid.shape[1:])
    padded[mask] = valid
    return padded


def encode_batch_items(encode: Callable[[torch.Tensor], torch.Tensor],
                       batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate [B, ...] and history [B, L, ...] representations; padded history steps are never encoded."""
    mask = batch.hist_mask
    candidate, history = encode_distinct(encode, batch.target_item, batch.hist_items[mask])
    return candidate, pad_history(history, mask)


def ctr_outputs(logit: torch.Tensor, aux_losses: dict[str, torch.Tensor] | None = None,
                loss_weights: dict[str, float] | None = None) -> dict:
    return {"logit": logit, "prob": torch.sigmoid(logit), "aux_losses": aux_losses or {},
            "loss_weights": loss_weights or {}}
