"""Report stage: the paper's Tables 2-5 and Figs. 5-6 from the trained models (paper §4.3-4.5).

`write_report` evaluates every model of `train.models` in every seed run (`marn.analysis.runs`) on the test
split, and MARN in every lambda0 run, then writes into `paths.report` (`analysis.out_dir`):
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
from marn.config import AnalysisConfig, DataConfig, EvaluateConfig, Params, Paths, TrainConfig
from marn.data.dataset import CTRDataset, load_split
from marn.data.item_table import load_item_table
from marn.evaluate import (
    more_negatives_dataset, more_negatives_metric, popularity_auc, predict, train_interactions, user_auc,
)
from marn.files import atomic_write_text
from marn.items import ItemTable
from marn.models.persistence import load_model, model_file
from marn.models.registry import model_folder

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


def _dataset_label(data: DataConfig) -> str:
    source, category = data.source, data.category
    return f"{source} {category}" if source.startswith("amazon") else source


def _tracked_name(folder: Path) -> str:
    """A run folder as params.yaml names it: relative to the working directory that `Paths.from_params` resolved
    it against (the project root under dvc), so no machine path is in a tracked output; absolute outside it."""
    return (folder.relative_to(Path.cwd()) if folder.is_relative_to(Path.cwd()) else folder).as_posix()


def _evaluate(name: str, run: Run, table: ItemTable, dataset: CTRDataset, batch_size: int):
    """The model of `run` and its test predictions."""
    model = load_model(model_file(run.models_dir, name), name, table)
    return model, predict(model, dataset, batch_size)


def _draw_tsne(analysis: AnalysisConfig, table: ItemTable, models_root: Path, path: Path) -> None:
    name = analysis.tsne_model
    model = load_model(model_file(models_root, name), name, table)
    items = sample_items(table.n_items, analysis.tsne_items, np.random.default_rng(analysis.seed))
    plot_tsne(tsne_embedding(modality_features(model, name, items), analysis.seed), name, path)


def build_report(train: TrainConfig, data: DataConfig, evaluate: EvaluateConfig, analysis: AnalysisConfig,
                 paths: Paths, figures_dir: Path) -> dict:
    """Evaluate the runs under `paths.models` with the ops backend the caller entered, draw the figures into
    `figures_dir` and return the summary the report renders."""
    model_names, batch_size, cutoffs = train.models, evaluate.batch_size, analysis.recall_at
    check_cutoffs(cutoffs)
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    models_root = paths.models
    table = load_item_table(paths.prepared, paths.features)
    dataset = load_split(paths.prepared, "test", data)
    figures: dict[str, Path] = {}
    if analysis.tsne_model in model_names:
        figures["fig5_tsne"] = figures_dir / "fig5_tsne.png"
        _draw_tsne(analysis, table, models_root, figures["fig5_tsne"])

    runs = seed_runs(train, models_root)
    # one rng per pool, both seeded alike, so both tables rank the same queries
    queries = {pool: cold_start_queries(dataset, analysis.cold_start_queries, analysis.cold_start_candidates,
                                        np.random.default_rng(analysis.seed), unseen_only=pool == "unseen")
               for pool in ("unseen", "mixed")}
    train_count, n_levels = train_interactions(paths.prepared), data.popularity_levels
    more_negatives = more_negatives_dataset(dataset, evaluate.test_negatives, evaluate.seed)
    auc_by_seed: dict[str, dict[int, float]] = {}  # model -> seed -> user-AUC
    more_negatives_auc: dict[str, dict[int, float]] = {}
    popularity_rows: dict[str, list[list[dict]]] = {}
    ranks: dict[str, dict[str, list[np.ndarray]]] = {pool: {} for pool in queries}
    seed_models = set(train.seed_models)
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
    for run in lambda0_runs(train, analysis.lambda0_grid, models_root):
        if run.lambda0 != train.lambda0:
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
        "dataset": _dataset_label(data),
        "runs": [{"seed": run.seed, "lambda0": run.lambda0, "models_dir": _tracked_name(run.models_dir)}
                 for run in runs],
        "user_auc": {name: _spread_entry(by_seed) for name, by_seed in auc_by_seed.items()},
        "more_negatives": None if more_negatives is None else {
            "metric": more_negatives_metric(evaluate.test_negatives),
            "test_negatives": evaluate.test_negatives,
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


def write_report(train: TrainConfig, data: DataConfig, evaluate: EvaluateConfig, analysis: AnalysisConfig,
                 paths: Paths) -> dict:
    """Build the report into `paths.report`; returns the summary written to `paper_tables.json`."""
    paper_numbers = load_paper_numbers(Path(analysis.paper_numbers)) if analysis.paper_numbers else None
    out_dir = paths.report
    figures_dir = out_dir / FIGURES
    shutil.rmtree(figures_dir, ignore_errors=True)  # a figure of an earlier config must not outlive it
    figures_dir.mkdir(parents=True)
    summary = build_report(train, data, evaluate, analysis, paths, figures_dir)
    atomic_write_text(out_dir / "paper_tables.json", json.dumps(summary, indent=2))
    atomic_write_text(out_dir / "paper_tables.md", render_report(summary, paper_numbers))
    return summary


def run(config: Params, paths: Paths) -> dict:
    """The report stage."""
    with ops.use_backend(config.ops.backend):
        return write_report(config.train, config.data, config.evaluate, config.analysis, paths)
