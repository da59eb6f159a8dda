"""Linear probes: can each planted factor of the synthetic world be read off each modality's offline features?

For every factor in `truth.npz` (shared, image-only, title-only) and every modality (image features as the
features stage wrote them; the title as the mean of its words' vectors), a ridge classifier (one-hot
targets, standardized features) is fitted on 4 of 5 seeded item folds and scored on the fifth. Its ridge
weight is chosen inside the training folds by leave-one-out (one eigendecomposition per fold), so the
held-out fold is never looked at. Chance is the share of the most common level among the probed items.

    python -m marn.analysis.probes [--raw data/raw --prepared data/prepared --features data/features --out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from marn.data.formats import read_items, read_report
from marn.data.item_table import load_item_table
from marn.items import RESERVED_ENTRIES
from marn.data.synthetic.choice import as_rows
from marn.items import PAD

FOLDS = 5
RIDGE_GRID = tuple(10.0 ** k for k in range(-2, 6))  # ridge weights tried, relative to the number of features
LEVEL_KEYS = {"shared": "item_shared_levels", "image": "item_image_levels", "title": "item_title_levels"}
MODALITIES = ("image", "title")


def factor_levels(truth_path: Path, asins: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
    """Names, kinds (shared / image / title) and levels [items, factors] of the planted factors, rows in the
    order of `asins` (the prepared items, reserved rows excluded)."""
    if not truth_path.is_file():
        raise FileNotFoundError(f"{truth_path} not found: probes need the synthetic world's truth.npz")
    with np.load(truth_path) as truth:
        missing = [key for key in ("asin", "factor_names", *LEVEL_KEYS.values()) if key not in truth.files]
        if missing:
            raise ValueError(f"{truth_path}: missing {missing}; it was not written by marn.data.synthetic")
        names = [str(name) for name in truth["factor_names"]]
        levels = np.concatenate([truth[key] for key in LEVEL_KEYS.values()], axis=1).astype(np.int64)
        try:
            rows = as_rows(asins, truth["asin"])
        except KeyError as err:
            raise ValueError(f"prepared item {err.args[0]} is not in {truth_path}: the prepared data was not "
                             "made from this synthetic world") from err
    kinds = [name.split("/", 1)[0] for name in names]
    return names, kinds, levels[rows]


def mean_title_vectors(title_ids: torch.Tensor, word_vectors: torch.Tensor) -> torch.Tensor:
    """Each title's mean word vector over its non-padding ids (out-of-vocabulary words count, with the OOV
    row, as the model sees them); zeros for an empty title."""
    present = (title_ids != PAD).to(torch.float64)
    summed = (word_vectors.to(torch.float64)[title_ids] * present[..., None]).sum(1)
    return summed / present.sum(1, keepdim=True).clamp(min=1.0)


def _standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, sd = train.mean(0), train.std(0)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))  # constant columns carry nothing; leave them at 0
    return (train - mean) / sd, (test - mean) / sd


def _ridge_fit_predict(x: torch.Tensor, gram_eigen: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor,
                       x_test: torch.Tensor) -> torch.Tensor:
    """Scores of `x_test` from a ridge regression on one-hot `y`, its weight picked by leave-one-out
    accuracy on (x, y). Kernel form, the features outnumber the items: `gram_eigen` is eigh(x x^T), shared by
    every target fitted on the same `x`."""
    d = x.shape[1]
    eigenvalues, eigenvectors = gram_eigen
    targets = torch.nn.functional.one_hot(y, int(y.max()) + 1).to(torch.float64)
    y_mean = targets.mean(0)
    centred = targets - y_mean
    projected = eigenvectors.T @ centred
    best = (-1.0, None)
    for weight in RIDGE_GRID:
        shrink = eigenvalues / (eigenvalues + weight * d)
        fitted = eigenvectors @ (shrink[:, None] * projected)
        leverage = (eigenvectors ** 2) @ shrink
        # leave-one-out fit of a ridge without intercept, (fit - h * y) / (1 - h); the fold's centring still
        # includes the left-out item, so this only picks the weight and is close to, not exactly, leave-one-out
        left_out = (fitted - leverage[:, None] * centred) / (1.0 - leverage)[:, None]
        accuracy = float((left_out.argmax(1) == y).to(torch.float64).mean())
        if accuracy > best[0]:
            best = (accuracy, weight)
    dual = eigenvectors @ (projected / (eigenvalues + best[1] * d)[:, None])
    return x_test @ (x.T @ dual) + y_mean


def probe_accuracies(features: torch.Tensor, levels: np.ndarray, seed: int = 0) -> list[float]:
    """Held-out accuracy of a ridge classifier from `features` [n, d] to each column of `levels` [n, factors],
    over FOLDS seeded folds (standardized and decomposed once per fold for all factors)."""
    n = len(levels)
    if n < FOLDS:
        raise ValueError(f"a probe needs at least {FOLDS} items, got {n}")
    fold = np.random.default_rng(seed).permutation(n) % FOLDS
    labels = torch.from_numpy(levels)
    correct = torch.zeros(levels.shape[1], dtype=torch.int64)
    for k in range(FOLDS):
        train, test = torch.from_numpy(fold != k), torch.from_numpy(fold == k)
        x, x_test = _standardize(features[train].to(torch.float64), features[test].to(torch.float64))
        gram_eigen = torch.linalg.eigh(x @ x.T)
        for f in range(levels.shape[1]):
            scores = _ridge_fit_predict(x, gram_eigen, labels[train, f], x_test)
            correct[f] += int((scores.argmax(1) == labels[test, f]).sum())
    return (correct / n).tolist()


def probe_accuracy(features: torch.Tensor, levels: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a ridge classifier from `features` [n, d] to `levels` [n], over FOLDS seeded folds."""
    return probe_accuracies(features, levels[:, None], seed)[0]


def run_probes(raw_dir: Path, prepared_dir: Path, features_dir: Path, seed: int = 0) -> dict:
    """Probe accuracy per factor and modality on the items that have an image (all items when none has)."""
    torch.set_num_threads(1)
    table = load_item_table(prepared_dir, features_dir)
    asins = read_items(prepared_dir, ["asin"]).column("asin").to_numpy(zero_copy_only=False)[RESERVED_ENTRIES:]
    names, kinds, levels = factor_levels(raw_dir / "truth.npz", asins)
    has_image = table.image_mask[RESERVED_ENTRIES:].numpy()
    items = has_image if has_image.any() else np.ones(len(asins), dtype=bool)
    rows = torch.from_numpy(np.flatnonzero(items) + RESERVED_ENTRIES)
    features = {
        "image": table.image[rows].to(torch.float64) if has_image.any() else None,
        "title": mean_title_vectors(table.title_ids[rows], table.word_vectors),
    }
    targets = levels[items]
    accuracy = {m: None if features[m] is None else probe_accuracies(features[m], targets, seed) for m in MODALITIES}
    factors = []
    for f, (name, kind) in enumerate(zip(names, kinds)):
        factors.append({
            "factor": name, "kind": kind,
            **{m: None if accuracy[m] is None else round(accuracy[m][f], 4) for m in MODALITIES},
            "chance": round(float(np.bincount(targets[:, f]).max() / len(targets)), 4),
        })
    report = read_report(features_dir) or {}
    return {
        "items": int(items.sum()),
        "folds": FOLDS,
        "seed": seed,
        "probe": "ridge classifier on standardized features, ridge weight by leave-one-out in the training folds",
        "image_features": {key: report.get(key) for key in ("image_encoder", "weights", "image_size")},
        "title_features": {key: report.get(key) for key in ("word_vectors", "word_dim", "words")},
        "factors": factors,
    }


def markdown_table(result: dict) -> str:
    def cell(value):
        return "n/a" if value is None else f"{value:.3f}"

    lines = [f"items: {result['items']}, {result['folds']}-fold held-out accuracy; image: "
             f"{result['image_features']}; title: {result['title_features']}", "",
             "| factor | kind | image features | title features | chance |", "|---|---|---|---|---|"]
    for row in result["factors"]:
        lines.append(f"| {row['factor'].split('/', 1)[-1]} | {row['kind']} | {cell(row['image'])} | "
                     f"{cell(row['title'])} | {cell(row['chance'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--features", type=Path, default=Path("data/features"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the result")
    args = parser.parse_args(argv)
    result = run_probes(args.raw, args.prepared, args.features, args.seed)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))
    return result


if __name__ == "__main__":
    main()
