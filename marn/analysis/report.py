"""Report stage: the paper's Tables 2-5 and Figs. 5-6 from the trained models (paper §4.3-4.5).

`write_report` evaluates every model of `train.models` in every seed run (`marn.analysis.runs`) on the test
split, and MARN in every lambda0 run, then writes into `analysis.out_dir`:
- `paper_tables.md`: Tables 2 and 3 (user-AUC mean ± sd over seeds, and user_auc@<k>neg when
  `evaluate.test_negatives` = k > 1), the tests of the paper's orderings on user-AUC (each adjacent step of
  Table 3's ladder and MARN against the best baseline: mean difference, Welch's t, same-seed differences and the
  paired t, and whether the ordering holds here), Table 4 (AUC per popularity level, levels defined), Table 5
  (cold-start recall@N among unseen candidates, the paper's protocol, and among all candidates, both protocols
  included), the figures;
- `paper_tables.json`: the same numbers (`build_report`'s summary), for `dvc metrics`;
- `figures/`: `fig5_tsne.png`, `fig6_losses.png` and, with a lambda0 sweep, `fig6_lambda0.png`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from marn import ops
from marn.analysis.cold_start import (
    check_cutoffs, clicked_item_ranks, cold_start_queries, random_recall_at, recall_at,
)
from marn.analysis.figures import plot_lambda0, plot_training_losses, plot_tsne
from marn.analysis.paper import (
    PROPOSED, SIGNIFICANCE_LEVEL, UNIMODAL_BASE, best_baseline_test, load_paper_numbers, table3_ladder_tests,
)
from marn.analysis.representations import modality_features, sample_items, tsne_embedding
from marn.analysis.runs import LAMBDA0_MODEL, Run, lambda0_runs, seed_runs
from marn.analysis.significance import spread
from marn.analysis.tables import render_report
from marn.config import resolve_path
from marn.data.dataset import CTRDataset
from marn.data.item_table import ItemTable, load_item_table
from marn.evaluate import (
    more_negatives_dataset, more_negatives_metric, popularity_auc, predict, train_interactions, user_auc,
)
from marn.models.persistence import load_model
from marn.models.registry import check_model_name, model_folder

FIGURES = "figures"


def _spread_entry(by_seed: dict[int, float]) -> dict:
    result = spread(list(by_seed.values()))
    return {"mean": result.mean, "sd": result.sd, "n": result.n, "seeds": list(by_seed),
            "values": list(by_seed.values())}


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _popularity_table(rows_by_model: dict[str, list[list[dict]]]) -> dict | None:
    """Mean AUC over runs per popularity level for MARN and BaseModel+IDs, their gap, and each level's items,
    samples and training-interaction range (the same in every run: levels depend on the test split only)."""
    if not {PROPOSED, UNIMODAL_BASE} <= set(rows_by_model):
        return None
    first_run = rows_by_model[PROPOSED][0]
    levels = [row["level"] for row in first_run]
    means = {}
    for model in (PROPOSED, UNIMODAL_BASE):
        per_level = {level: [] for level in levels}
        for rows in rows_by_model[model]:
            for row in rows:
                per_level[row["level"]].append(row["auc"])
        means[model] = [_mean_or_none(per_level[level]) for level in levels]
    gap = [None if a is None or b is None else a - b for a, b in zip(means[PROPOSED], means[UNIMODAL_BASE])]
    return {"levels": levels, "rows": {**means, "gap": gap},
            **{key: [row[key] for row in first_run]
               for key in ("n_items", "n_samples", "min_train_interactions", "max_train_interactions")}}


def _cold_start_table(ranks_by_model: dict[str, list[np.ndarray]], n_candidates: np.ndarray, cutoffs: list[int]
                      ) -> dict | None:
    if not {PROPOSED, UNIMODAL_BASE} <= set(ranks_by_model) or len(n_candidates) == 0:
        return None
    rows = {}
    for model in (PROPOSED, UNIMODAL_BASE):
        per_run = [recall_at(ranks, cutoffs) for ranks in ranks_by_model[model]]
        rows[model] = [float(np.mean([recall[n] for recall in per_run])) for n in cutoffs]
    random = random_recall_at(n_candidates, cutoffs)
    rows["RANDOM"] = [random[n] for n in cutoffs]
    return {"cutoffs": cutoffs, "queries": int(len(n_candidates)), "mean_candidates": float(np.mean(n_candidates)),
            "rows": rows}


def _dataset_label(data_cfg) -> str:
    source = str(data_cfg.source)
    return f"{source} {data_cfg.category}" if source.startswith("amazon") else source


def _evaluate(name: str, run: Run, table: ItemTable, dataset: CTRDataset, batch_size: int):
    """The model of `run` and its test predictions."""
    model = load_model(model_folder(run.models_dir, name) / "model.pt", name, table)
    return model, predict(model, dataset, batch_size)


def _draw_tsne(cfg, table: ItemTable, models_root: Path, path: Path) -> None:
    name = str(cfg.analysis.tsne_model)
    model = load_model(model_folder(models_root, name) / "model.pt", name, table)
    items = sample_items(table.n_items, int(cfg.analysis.tsne_items), np.random.default_rng(int(cfg.analysis.seed)))
    plot_tsne(tsne_embedding(modality_features(model, name, items), int(cfg.analysis.seed)), name, path)


def build_report(cfg, prepared_dir: Path, features_dir: Path, models_root: Path, figures_dir: Path) -> dict:
    """Evaluate the runs, draw the figures into `figures_dir` and return the summary the report renders.

    Reads `train.models`, `train.seed`, `train.seeds`, `train.seed_models`, `train.lambda0`, `train.num_threads`, `data.source`,
    `data.category`, `data.max_len`, `data.time_gap_buckets`, `data.popularity_levels`, `ops.backend`,
    `evaluate.batch_size`, `evaluate.test_negatives`, `evaluate.seed`, `train.out_dir` and the `analysis` section.
    """
    model_names = [check_model_name(str(name)) for name in cfg.train.models]
    analysis, batch_size = cfg.analysis, int(cfg.evaluate.batch_size)
    cutoffs = [int(n) for n in analysis.recall_at]
    check_cutoffs(cutoffs)
    check_model_name(str(analysis.tsne_model))
    if batch_size < 1:
        raise ValueError(f"evaluate.batch_size must be at least 1, got {batch_size}")
    ops.configure(cfg.ops)
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    table = load_item_table(prepared_dir, features_dir)
    dataset = CTRDataset(prepared_dir, "test", int(cfg.data.max_len), int(cfg.data.time_gap_buckets))
    figures: dict[str, Path] = {}
    if str(analysis.tsne_model) in model_names:
        figures["fig5_tsne"] = figures_dir / "fig5_tsne.png"
        _draw_tsne(cfg, table, models_root, figures["fig5_tsne"])

    runs = seed_runs(cfg.train, models_root)
    # one rng per pool, both seeded alike, so both tables rank the same queries
    queries = {pool: cold_start_queries(dataset, int(analysis.cold_start_queries), int(analysis.cold_start_candidates),
                                        np.random.default_rng(int(analysis.seed)), unseen_only=pool == "unseen")
               for pool in ("unseen", "mixed")}
    train_count, n_levels = train_interactions(prepared_dir), int(cfg.data.popularity_levels)
    more_negatives = more_negatives_dataset(dataset, int(cfg.evaluate.test_negatives), int(cfg.evaluate.seed))
    auc_by_seed: dict[str, dict[int, float]] = {}  # model -> seed -> user-AUC
    more_negatives_auc: dict[str, dict[int, float]] = {}
    popularity_rows: dict[str, list[list[dict]]] = {}
    ranks: dict[str, dict[str, list[np.ndarray]]] = {pool: {} for pool in queries}
    seed_models = set(cfg.train.seed_models)
    for name in model_names:
        for run in runs if name in seed_models else runs[:1]:  # the extra seeds were trained for seed_models only
            model, predictions = _evaluate(name, run, table, dataset, batch_size)
            auc_by_seed.setdefault(name, {})[run.seed] = user_auc(predictions)
            if more_negatives is not None:
                more_negatives_auc.setdefault(name, {})[run.seed] = user_auc(
                    predictions, predict(model, more_negatives, batch_size))
            if name in (PROPOSED, UNIMODAL_BASE):
                popularity_rows.setdefault(name, []).append(popularity_auc(predictions, train_count, n_levels))
                for pool, pool_queries in queries.items():
                    ranks[pool].setdefault(name, []).append(clicked_item_ranks(model, dataset, pool_queries,
                                                                               batch_size))

    lambda0_auc: dict[float, float] = {}  # every lambda0 run has seed train.seed, so the curve compares like with like
    for run in lambda0_runs(cfg.train, analysis.lambda0_grid, models_root):
        if run.lambda0 != float(cfg.train.lambda0):
            lambda0_auc[run.lambda0] = user_auc(_evaluate(LAMBDA0_MODEL, run, table, dataset, batch_size)[1])
        elif LAMBDA0_MODEL in auc_by_seed:  # the train stage's run, evaluated above as the first seed run
            lambda0_auc[run.lambda0] = auc_by_seed[LAMBDA0_MODEL][run.seed]

    if PROPOSED in model_names:
        figures["fig6_losses"] = figures_dir / "fig6_losses.png"
        log_rows = json.loads((model_folder(models_root, PROPOSED) / "train_log.json").read_text())
        plot_training_losses(log_rows, PROPOSED, figures["fig6_losses"])
    if len(lambda0_auc) >= 2:
        figures["fig6_lambda0"] = figures_dir / "fig6_lambda0.png"
        plot_lambda0(lambda0_auc, figures["fig6_lambda0"])
    return {
        "dataset": _dataset_label(cfg.data),
        # the folder as params.yaml names it, whatever the working directory: no machine path in a tracked output
        "runs": [{"seed": run.seed, "lambda0": run.lambda0,
                  "models_dir": (Path(cfg.train.out_dir) / run.models_dir.relative_to(models_root)).as_posix()}
                 for run in runs],
        "user_auc": {name: _spread_entry(by_seed) for name, by_seed in auc_by_seed.items()},
        "more_negatives": None if more_negatives is None else {
            "metric": more_negatives_metric(int(cfg.evaluate.test_negatives)),
            "test_negatives": int(cfg.evaluate.test_negatives),
            "user_auc": {name: _spread_entry(by_seed) for name, by_seed in more_negatives_auc.items()}},
        "orderings": {"metric": "user_auc", "significance_level": SIGNIFICANCE_LEVEL,
                      "table3_ladder": table3_ladder_tests(auc_by_seed), "best_baseline": best_baseline_test(auc_by_seed)},
        "popularity_auc": _popularity_table(popularity_rows),
        **{f"cold_start_recall_{pool}": _cold_start_table(
            ranks[pool], np.array([len(query.candidates) for query in pool_queries]), cutoffs)
           for pool, pool_queries in queries.items()},
        "lambda0": {"values": sorted(lambda0_auc), "user_auc": [lambda0_auc[value] for value in sorted(lambda0_auc)]},
        "figures": {key: f"{FIGURES}/{path.name}" for key, path in figures.items()},
    }


def write_report(cfg, prepared_dir: Path, features_dir: Path, models_root: Path, out_dir: Path) -> dict:
    """Build the report into `out_dir` (`analysis.out_dir`); returns the summary written to `paper_tables.json`."""
    paper_numbers = load_paper_numbers(resolve_path(cfg.analysis.paper_numbers)) if cfg.analysis.paper_numbers else None
    out_dir = Path(out_dir)
    figures_dir = out_dir / FIGURES
    shutil.rmtree(figures_dir, ignore_errors=True)  # a figure of an earlier config must not outlive it
    figures_dir.mkdir(parents=True)
    summary = build_report(cfg, Path(prepared_dir), Path(features_dir), Path(models_root), figures_dir)
    (out_dir / "paper_tables.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "paper_tables.md").write_text(render_report(summary, paper_numbers))
    return summary
