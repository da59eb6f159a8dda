"""The paper's Fig. 5: t-SNE of the modality-specific s^m, modality-invariant c^m and pooled c item features."""

from __future__ import annotations

import numpy as np
import torch

from marn.items import RESERVED_ENTRIES
from marn.models.base import CTRModel
from marn.nn.fusion import MultimodalAttentionFusion

TSNE_MODALITIES = ("image", "title")
TSNE_PERPLEXITY = 30.0  # scikit-learn's default; lowered for fewer than 91 points, where it must stay below n / 3


def sample_items(n_items: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct real item indices (all of them when there are fewer), sorted."""
    if count < 2:
        raise ValueError(f"analysis.tsne_items must be at least 2, got {count}")
    real = np.arange(RESERVED_ENTRIES, n_items)
    return real if len(real) <= count else np.sort(rng.choice(real, size=count, replace=False))


@torch.inference_mode()
def modality_features(model: CTRModel, model_name: str, items: np.ndarray) -> dict[str, np.ndarray]:
    """{"s^image", "s^title", "c^image", "c^title", "c"}: [n, D] arrays of the given items.

    c is what the model adds to the attended specific features, rep - s (eq. 8), so it is the pooled
    invariant feature of whichever pooling the model uses (max, mean or DDMA-weighted max).
    """
    fusion = getattr(model, "fusion", None)
    modalities = getattr(getattr(model, "variant", None), "modalities", ())
    if not isinstance(fusion, MultimodalAttentionFusion) or not set(TSNE_MODALITIES) <= set(modalities):
        raise ValueError(f"analysis.tsne_model {model_name!r} has no multimodal attention fusion over "
                         f"{' and '.join(TSNE_MODALITIES)}; pick MARN or a BaseModel+MAF variant")
    model.eval()
    item_tensor = torch.from_numpy(items.astype(np.int64))
    parts = fusion(model.modality_embedding(item_tensor))
    representation, _ = model.encode_items(item_tensor)
    features = {}
    for kind, values in (("s", parts.specific), ("c", parts.invariant)):
        for modality in TSNE_MODALITIES:
            features[f"{kind}^{modality}"] = values[:, modalities.index(modality)].double().numpy()
    features["c"] = (representation - parts.fused_specific).double().numpy()
    return features


def tsne_embedding(features: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """One 2-D t-SNE of all feature sets together (so their positions are comparable), split back by set."""
    from sklearn.manifold import TSNE

    stacked = np.concatenate(list(features.values()))
    perplexity = min(TSNE_PERPLEXITY, (len(stacked) - 1) / 3.0)
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(stacked)
    return dict(zip(features, np.split(points, np.cumsum([len(v) for v in features.values()])[:-1])))
