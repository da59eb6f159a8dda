"""Evaluate stage: trained models on the test split (paper §4.1, Table 4, Fig. 4).

`evaluate_models` writes
- `paths.eval_out` (`evaluate.out`): `{model: {user_auc, auc, gauc, logloss, n_users, n_samples}}`, plus
  `user_auc@<k>neg` when `evaluate.test_negatives` = k > 1 (eq. 11 with k sampled negatives per test click);
- `<paths.eval_plots>/popularity_auc.json` (rows `{model, level, auc, n_samples, n_items, min_train_interactions,
  max_train_interactions}`, `popularity_levels_of_test_items` defines the levels) and `popularity_auc.png`;
- `<paths.eval_plots>/modality_attention.json` (rows `{model, category, modality, attention_norm}`, models with
  attention over modalities only) and `modality_attention_<slug>.png` per such model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from marn import ops
from marn.config import DataConfig, EvaluateConfig, Params, Paths
from marn.data.dataset import CTRDataset, load_split
from marn.data.formats import read_items
from marn.data.item_table import load_item_table
from marn.files import atomic_write_text
from marn.data.prepare import sample_negatives
from marn.items import RESERVED_ENTRIES, ItemTable
from marn.models.base import CTRModel
from marn.models.persistence import load_model, model_file

PROBABILITY_CLIP = 1e-15  # keeps log loss finite for a saturated prediction


def per_group_auc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC of each group (NaN where the group lacks a class) and its number of samples, in sorted group order.

    Eq. 11's pair count, sum over positive-negative pairs of [score_pos > score_neg], with tied pairs
    counted as 1/2, computed from ranks: (sum of the positives' ranks - n+(n+ + 1)/2) / (n+ n-).
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if not (len(groups) == len(labels) == len(scores)):
        raise ValueError(f"groups, labels and scores differ in length: {len(groups)}, {len(labels)}, {len(scores)}")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} scores are NaN")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, found {np.unique(labels)[~np.isin(np.unique(labels), (0, 1))]}")
    _, group = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group.max()) + 1 if group.size else 0
    order = np.lexsort((scores, group))
    group, scores, positive = group[order], scores[order], labels[order].astype(bool)
    rank_in_group = np.arange(len(group)) - np.searchsorted(group, group) + 1
    new_run = np.r_[True, (group[1:] != group[:-1]) | (scores[1:] != scores[:-1])]
    run = np.cumsum(new_run) - 1
    mean_rank = (np.bincount(run, weights=rank_in_group) / np.bincount(run))[run]  # ties share their mean rank
    n_samples = np.bincount(group, minlength=n_groups)
    n_positive = np.bincount(group, weights=positive, minlength=n_groups)
    n_negative = n_samples - n_positive
    positive_rank_sum = np.bincount(group, weights=mean_rank * positive, minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (positive_rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)
    auc[(n_positive == 0) | (n_negative == 0)] = np.nan
    return auc, n_samples


def ranking_metrics(users: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """User-averaged AUC (eq. 11, users holding both classes), global AUC, impression-weighted gAUC, log loss."""
    user_auc, impressions = per_group_auc(users, labels, probabilities)
    both_classes = ~np.isnan(user_auc)
    if not both_classes.any():
        raise ValueError("no user has both a positive and a negative test sample; user AUC is undefined")
    (global_auc,), _ = per_group_auc(np.zeros(len(labels)), labels, probabilities)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    y = np.asarray(labels, dtype=np.float64)
    return {
        "user_auc": float(user_auc[both_classes].mean()),
        "auc": float(global_auc),
        "gauc": float(np.average(user_auc[both_classes], weights=impressions[both_classes])),
        "logloss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "n_users": int(both_classes.sum()),
        "n_samples": int(len(labels)),
    }


@torch.inference_mode()
def predict(model: CTRModel, dataset: CTRDataset, batch_size: int) -> dict[str, np.ndarray]:
    """Click probabilities of every sample of `dataset` in order, with the sample fields the metrics group by."""
    model.eval()
    columns: dict[str, list[np.ndarray]] = {"user": [], "label": [], "probability": [], "target_item": []}
    for start in range(0, len(dataset), batch_size):
        batch = dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset)))))
        columns["probability"].append(model(batch)["prob"].double().numpy())
        for key in ("user", "label", "target_item"):
            columns[key].append(getattr(batch, key).numpy())
    return {key: np.concatenate(parts) for key, parts in columns.items()}


def train_interactions(prepared_dir: Path) -> np.ndarray:
    """Number of training interactions of every item index (`train_count` of the items table)."""
    return read_items(prepared_dir, ["train_count"]).column("train_count").to_numpy().astype(np.int64)


def popularity_levels_of_test_items(target_items: np.ndarray, train_count: np.ndarray, n_levels: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Table 4's popularity levels: the distinct test target items (clicked or sampled) sorted by training
    interactions, ties broken by item index, cut into `n_levels` equal-frequency levels 0 (least popular) ..
    n_levels - 1, level k holding items [k n / L, (k + 1) n / L) of the n sorted items (sizes differ by at most 1).

    Returns the sorted distinct items and the level of each.
    """
    items = np.unique(np.asarray(target_items, dtype=np.int64))
    if len(items) < n_levels:
        raise ValueError(f"data.popularity_levels = {n_levels} needs at least as many distinct test items, "
                         f"the test split has {len(items)}")
    order = np.lexsort((items, train_count[items]))
    levels = np.empty(len(items), dtype=np.int64)
    levels[order] = np.arange(len(items)) * n_levels // len(items)
    return items, levels


def popularity_auc(predictions: dict[str, np.ndarray], train_count: np.ndarray, n_levels: int) -> list[dict]:
    """Global AUC of the test samples whose target item is in each level of `popularity_levels_of_test_items`
    (Table 4), None where a level lacks a class, with the level's sample and item counts and training-interaction
    range."""
    items, item_level = popularity_levels_of_test_items(predictions["target_item"], train_count, n_levels)
    sample_level = item_level[np.searchsorted(items, predictions["target_item"])]
    auc, n_samples = per_group_auc(sample_level, predictions["label"], predictions["probability"])
    rows = []
    for level, a, n in zip(range(n_levels), auc, n_samples):
        counts = train_count[items[item_level == level]]
        rows.append({"level": level, "auc": None if np.isnan(a) else float(a), "n_samples": int(n),
                     "n_items": int(len(counts)), "min_train_interactions": int(counts.min()),
                     "max_train_interactions": int(counts.max())})
    return rows


def extra_test_negatives(dataset: CTRDataset, n_negatives: int, seed: int) -> np.ndarray:
    """`n_negatives` - 1 more negative samples per positive test sample, with the same user and history, their items
    drawn uniformly with replacement from the items the user never touched (as the prepare stage draws the first)
    by `np.random.default_rng(seed)`; rows in the test split's layout, each positive's draws together."""
    samples = dataset.samples
    positives = samples[samples["label"] == 1]
    n_items = len(dataset.item_cold)
    sequence_users = np.repeat(np.arange(len(dataset.offsets) - 1), np.diff(dataset.offsets))
    touched_keys = np.unique(sequence_users * n_items + dataset.seq_items.astype(np.int64))
    users = np.repeat(positives["user"].astype(np.int64), n_negatives - 1)
    items = sample_negatives(np.random.default_rng(seed), users, np.arange(RESERVED_ENTRIES, n_items),
                             touched_keys, n_items)
    if (items < 0).any():
        raise ValueError(f"evaluate.test_negatives = {n_negatives}: no untouched item could be drawn for test user "
                         f"{int(users[items < 0][0])}")
    rows = np.zeros(len(users), dtype=samples.dtype)
    rows["user"], rows["item"], rows["label"] = users, items, 0
    rows["pos"] = np.repeat(positives["pos"], n_negatives - 1)
    return rows


def more_negatives_dataset(dataset: CTRDataset, n_negatives: int, seed: int) -> CTRDataset | None:
    """The test split's users and histories with only the `n_negatives` - 1 extra negative rows of
    `extra_test_negatives`, or None for the 1-negative protocol."""
    if n_negatives == 1:
        return None
    return dataset.with_samples(extra_test_negatives(dataset, n_negatives, seed))


def more_negatives_metric(n_negatives: int) -> str:
    return f"user_auc@{n_negatives}neg"


def user_auc(predictions: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None = None) -> float:
    """Eq. 11 on the test split's predictions, with the predictions on its extra negatives when given."""
    if extra is not None:
        predictions = {key: np.r_[predictions[key], extra[key]] for key in ("user", "label", "probability")}
    return ranking_metrics(predictions["user"], predictions["label"], predictions["probability"])["user_auc"]


@torch.inference_mode()
def category_modality_attention(model: CTRModel, table: ItemTable, batch_size: int) -> dict[str, dict[str, float]] | None:
    """Mean l2 norm of atten^m over the items of each category (Fig. 4); None for a model without it."""
    model.eval()
    items = torch.arange(RESERVED_ENTRIES, table.n_items)
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        attention = model.modality_attention(chunk)
        if attention is None:
            return None
        for modality, values in attention.items():
            per_category = torch.zeros(table.n_categories, dtype=torch.float64)
            per_category.index_add_(0, table.category[chunk], values.norm(dim=1).double())
            sums[modality] = sums.get(modality, 0) + per_category
    counts = torch.bincount(table.category[items], minlength=table.n_categories)
    return {table.category_names[c]: {m: float(s[c] / counts[c]) for m, s in sums.items()}
            for c in range(table.n_categories) if counts[c] > 0}


def _plot_popularity_auc(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        points = [(r["level"], r["auc"]) for r in rows if r["model"] == model and r["auc"] is not None]
        ax.plot(*zip(*points), marker="o", label=model)
    ax.set(xlabel="popularity level of the target item (0 = least popular)", ylabel="AUC",
           title="AUC per item popularity level")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_modality_attention(model_name: str, attention: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(attention)
    modalities = list(next(iter(attention.values())))
    values = np.array([[attention[c][m] for m in modalities] for c in categories])
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(modalities), 1.2 + 0.35 * len(categories)))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(modalities)), modalities)
    ax.set_yticks(range(len(categories)), categories)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax, label="mean ||atten^m||")
    ax.set_title(f"{model_name}: modality attention per category")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_models(evaluate: EvaluateConfig, data: DataConfig, model_names: Sequence[str], paths: Paths) -> dict:
    """Evaluate each model saved under `paths.models` with the ops backend the caller entered; writes
    `paths.eval_out` and the plots into `paths.eval_plots` and returns what `paths.eval_out` holds."""
    table = load_item_table(paths.prepared, paths.features)
    dataset = load_split(paths.prepared, "test", data)
    train_count, n_levels = train_interactions(paths.prepared), data.popularity_levels
    more_negatives = more_negatives_dataset(dataset, evaluate.test_negatives, evaluate.seed)

    results, popularity_rows, attention_rows, attention_plots = {}, [], [], {}
    for name in model_names:
        model = load_model(model_file(paths.models, name), name, table)
        predictions = predict(model, dataset, evaluate.batch_size)
        results[name] = ranking_metrics(predictions["user"], predictions["label"], predictions["probability"])
        if more_negatives is not None:
            results[name][more_negatives_metric(evaluate.test_negatives)] = user_auc(
                predictions, predict(model, more_negatives, evaluate.batch_size))
        popularity_rows += [{"model": name, **row} for row in popularity_auc(predictions, train_count, n_levels)]
        attention = category_modality_attention(model, table, evaluate.batch_size)
        if attention is not None:
            attention_plots[name] = attention
            attention_rows += [{"model": name, "category": c, "modality": m, "attention_norm": v}
                               for c, per_modality in attention.items() for m, v in per_modality.items()]

    atomic_write_text(paths.eval_out, json.dumps(results, indent=2))
    plots_dir = paths.eval_plots
    atomic_write_text(plots_dir / "popularity_auc.json", json.dumps(popularity_rows, indent=1))
    _plot_popularity_auc(popularity_rows, plots_dir / "popularity_auc.png")
    atomic_write_text(plots_dir / "modality_attention.json", json.dumps(attention_rows, indent=1))
    for name, attention in attention_plots.items():
        _plot_modality_attention(name, attention, plots_dir / f"modality_attention_{name}.png")
    return results


def run(config: Params, paths: Paths) -> dict:
    """The evaluate stage: every model of `train.models`."""
    with ops.use_backend(config.ops.backend):
        return evaluate_models(config.evaluate, config.data, config.train.models, paths)
