"""`reports/paper_tables.md` from the report summary: the layouts of the paper's Tables 2-5 and its Figs. 5-6."""

from __future__ import annotations

from marn.analysis.cold_start import MIXED_PROTOCOL, UNSEEN_PROTOCOL
from marn.analysis.paper import PROPOSED, TABLE2_BASELINES, TABLE3_ABLATIONS, UNIMODAL_BASE, PaperNumbers

PAPER_LAMBDA0_GRID = (0.01, 0.1, 0.5, 1.0, 1.8)  # Fig. 6 with train.lambda0 = 0.05 from the train stage
PAPER_SEEDS = (2, 3, 4, 5)  # with train.seed = 1: five runs per model
PAPER_SET_COMMAND = (
    "dvc exp run -S 'train.models=[" + ",".join((*TABLE2_BASELINES, *TABLE3_ABLATIONS, PROPOSED)) + "]' "
    "-S 'train.seeds=[" + ",".join(map(str, PAPER_SEEDS)) + "]' "
    "-S 'analysis.lambda0_grid=[" + ",".join(map(str, PAPER_LAMBDA0_GRID)) + "]'"
)
NOT_QUOTED = (
    "No number in this report is quoted from the paper (`analysis.paper_numbers` is null). Its default, "
    "`marn/analysis/paper_numbers.yaml`, holds the paper's Tables 2-5 and shows them beside these results."
)
QUOTED = ("Numbers headed \"(quoted from the paper)\" are the paper's own, copied from its tables into "
          "`analysis.paper_numbers`; every other number is computed here. The paper's datasets are not this "
          "report's, so compare orderings and gaps, not levels.")
MISSING = "—"


def format_spread(entry: dict | None) -> str:
    """'0.7123 ± 0.0021 (n=5)', '0.7123 (1 run)', or a dash when the model has no result."""
    if entry is None:
        return MISSING
    if entry["sd"] is None:
        return f"{entry['mean']:.4f} (1 run)"
    return f"{entry['mean']:.4f} ± {entry['sd']:.4f} (n={entry['n']})"


def _number(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _user_auc_table(models: tuple[str, ...], summary: dict, paper_numbers: dict[str, dict[str, float]]) -> list[str]:
    if not any(m in summary["user_auc"] for m in models):
        return ["No model of this table is in `train.models` (the paper set is at the end)."]
    header = ["Model", f"user-AUC, {summary['dataset']} (this implementation)",
              *(f"{dataset} (quoted from the paper)" for dataset in paper_numbers)]
    shown = [m for m in models
             if m in summary["user_auc"] or any(m in per_model for per_model in paper_numbers.values())]
    return _table(header, [[m, format_spread(summary["user_auc"].get(m)),
                            *(_number(per_model.get(m)) for per_model in paper_numbers.values())] for m in shown])


def _significance(test: dict) -> list[str]:
    if "baseline" not in test or "p_value" not in test:
        return [f"Welch's t-test of {PROPOSED} against the best baseline: not computed ({test['note']})."]
    return [f"Welch's t-test (two-sided, unequal variances) of {PROPOSED}'s user-AUC over runs against the best "
            f"of {test['chosen_from']}, **{test['baseline']}**: t = {test['t']:.3f}, df = {test['df']:.2f}, "
            f"**p = {test['p_value']:.3g}**."]


def _quoted_rows(per_dataset: dict[str, dict[str, list[float]]], header_of, skip: str | None = None) -> list[str]:
    """One table per dataset of the paper's rows (Tables 4-5), headed as quoted."""
    lines = []
    for dataset, rows in per_dataset.items():
        values = {name: row for name, row in rows.items() if name != skip}
        lines += ["", f"{dataset} (quoted from the paper):", "",
                  *_table(header_of(rows), [[name, *(_number(v) for v in row)] for name, row in values.items()])]
    return lines


def _popularity(table: dict | None, paper_rows: dict[str, dict[str, list[float]]]) -> list[str]:
    quoted = _quoted_rows(paper_rows, lambda rows: ["Model", *(f"level {level}" for level in
                                                              range(len(next(iter(rows.values())))))])
    if table is None:
        return [f"Needs {PROPOSED} and {UNIMODAL_BASE} in `train.models`.", *quoted]
    header = ["Model", *(f"level {level}" for level in table["levels"])]
    rows = [[name, *(_number(v) for v in values)] for name, values in table["rows"].items()]
    rows += [["test items", *map(str, table["n_items"])], ["test samples", *map(str, table["n_samples"])],
             ["training interactions", *(f"{low}–{high}" for low, high in
                                         zip(table["min_train_interactions"], table["max_train_interactions"]))]]
    return [f"Levels (the paper's protocol): the distinct target items of the test split (clicked or sampled as "
            f"negatives) are sorted by their number of training interactions, ties broken by item index, and cut "
            f"into {len(table['levels'])} equal-frequency levels, 0 = least popular (item counts differ by at most "
            "1). The AUC of level k is the global AUC over the test samples whose target item is in level k, "
            "clicked and non-clicked, so a click and its sampled negative may fall in different levels. Mean over "
            f"runs; gap = {PROPOSED} − {UNIMODAL_BASE}; the last rows give each level's items, samples and range of "
            "training interactions.", "", *_table(header, rows), *quoted]


def _cold_start(table: dict | None, protocol: str, quoted: list[str]) -> list[str]:
    if table is None:
        return [f"Needs {PROPOSED} and {UNIMODAL_BASE} in `train.models` and a test click on an item unseen "
                "in training.", *quoted]
    header = ["Model", *(f"@{n}" for n in table["cutoffs"])]
    rows = [[name, *(_number(v) for v in values)] for name, values in table["rows"].items()]
    return [f"Protocol: {protocol}", "",
            f"{table['queries']} queries, {table['mean_candidates']:.1f} candidates per query on average.", "",
            *_table(header, rows), *quoted]


def _figure(summary: dict, key: str, missing: str) -> list[str]:
    path = summary["figures"].get(key)
    return [f"![{key}]({path})"] if path else [missing]


def render_report(summary: dict, paper: PaperNumbers | None = None) -> str:
    """The markdown report. `summary` is what `marn.analysis.report.build_report` returns; `paper` holds the
    numbers quoted from the paper (`marn.analysis.paper.load_paper_numbers`), or None."""
    paper_numbers = paper.user_auc if paper else {}
    best_lambda0 = (f"The paper's best lambda0 (Fig. 6b, quoted from the paper): {paper.best_lambda0:g}."
                    if paper and paper.best_lambda0 is not None else "")
    seeds = ", ".join(str(run["seed"]) for run in summary["runs"])
    lambda0 = summary["lambda0"]
    lines = [
        f"# MARN (Li et al., WWW 2020): the paper's tables on {summary['dataset']}", "",
        f"Generated by the `report` stage from models trained with seeds {seeds} ({len(summary['runs'])} run(s) per "
        "model); user-AUC is eq. 11 on the test split. Do not edit: `dvc repro` rewrites it.", "",
        QUOTED if paper else NOT_QUOTED, "",
        "## Table 2: user-AUC of the baselines and MARN", "",
        *_user_auc_table((*TABLE2_BASELINES, PROPOSED), summary, paper_numbers), "",
        *_significance(summary["significance"]), "",
        "## Table 3: user-AUC of the ablations", "",
        *_user_auc_table((*TABLE3_ABLATIONS, PROPOSED), summary, paper_numbers), "",
        f"## Table 4: AUC per item popularity level, {PROPOSED} vs {UNIMODAL_BASE}", "",
        *_popularity(summary["popularity_auc"], paper.popularity_auc if paper else {}), "",
        f"## Table 5: cold-start click recall@N among unseen candidates (the paper's §4.6.2), {PROPOSED} vs "
        f"{UNIMODAL_BASE} vs RANDOM", "",
        *_cold_start(summary["cold_start_recall_unseen"], UNSEEN_PROTOCOL, _quoted_rows(
            paper.recall_at_n if paper else {}, lambda rows: ["Model", *(f"@{n}" for n in rows["n"])], skip="n")), "",
        "### Second protocol of Table 5 (not the paper's): cold-start click recall@N among all candidates, seen "
        "in training or not", "",
        *_cold_start(summary["cold_start_recall_mixed"], MIXED_PROTOCOL, []), "",
        "## Fig. 5: t-SNE of modality-specific and modality-invariant item features", "",
        *_figure(summary, "fig5_tsne", "Not drawn: `analysis.tsne_model` is not in `train.models`."), "",
        "## Fig. 6: losses over training and user-AUC over lambda0", "",
        *_figure(summary, "fig6_losses", f"Not drawn: {PROPOSED} is not in `train.models`."), "",
        *(_table(["lambda0", f"{PROPOSED} user-AUC, seed {summary['runs'][0]['seed']}"],
                 [[f"{v:g}", _number(auc)] for v, auc in zip(lambda0["values"], lambda0["user_auc"])])
          if lambda0["values"] else []), "",
        *_figure(summary, "fig6_lambda0", "The user-AUC-over-lambda0 curve needs `analysis.lambda0_grid` "
                 f"(the paper's: `-S 'analysis.lambda0_grid=[{','.join(map(str, PAPER_LAMBDA0_GRID))}]'`)."), "",
        best_lambda0, "",
        "## Reproducing the paper set", "",
        "Every baseline and ablation, five seeds, and the lambda0 sweep, as one DVC experiment (long on a CPU):", "",
        f"    {PAPER_SET_COMMAND}", "",
    ]
    return "\n".join(lines)
