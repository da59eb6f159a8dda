"""`reports/paper_tables.md` from the report summary: the layouts of the paper's Tables 2-5 and its Figs. 5-6."""

from __future__ import annotations

from marn.analysis.cold_start import MIXED_PROTOCOL, UNSEEN_PROTOCOL
from marn.analysis.paper import (
    HOLDS, NOT_SIGNIFICANT, PROPOSED, REVERSED, REVERSED_NOT_SIGNIFICANT, TABLE2_BASELINES, UNIMODAL_BASE, PaperNumbers,
)
from marn.models.registry import ABLATIONS, TABLE3_LADDER

PAPER_LAMBDA0_GRID = (0.01, 0.1, 0.5, 1.0, 1.8)  # Fig. 6 with train.lambda0 = 0.05 from the train stage
PAPER_SET_COMMAND = "python -m flows.paper_set"  # presets/paper.yaml as one DVC experiment (flows/paper_set.py)
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
    more = summary["more_negatives"]
    header = ["Model", f"user-AUC, {summary['dataset']} (this implementation"
              + ("; primary, 1 negative per test click)" if more else ")"),
              *([f"{more['metric']} (this implementation; {more['test_negatives']} negatives per test click)"]
                if more else []),
              *(f"{dataset} (quoted from the paper)" for dataset in paper_numbers)]
    shown = [m for m in models
             if m in summary["user_auc"] or any(m in per_model for per_model in paper_numbers.values())]
    return [*_table(header, [[m, format_spread(summary["user_auc"].get(m)),
                              *([format_spread(more["user_auc"].get(m))] if more else []),
                              *(_number(per_model.get(m)) for per_model in paper_numbers.values())]
                             for m in shown]),
            "", "Ours: mean ± sample sd over seeds (n = seeds); the seed-to-seed sd is the noise every comparison "
                "below must beat."]


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def _t_cell(test: dict) -> str:
    if "p_value" not in test:  # why is in the verdict when it matters
        return MISSING
    return f"t = {test['t']:.2f}, df = {test['df']:.3g}, p = {test['p_value']:.3g}"


def _ordering_row(test: dict) -> list[str]:
    paired = test["paired"]
    return [f"{test['lower']} < {test['higher']}", _signed(test["mean_difference"]), _t_cell(test["welch"]),
            "; ".join(f"{seed}: {_signed(d)}" for seed, d in zip(test["seeds"], test["same_seed_differences"]))
            or MISSING,
            (f"{_signed(paired['mean_difference'])} ± {paired['sd_difference']:.4f}" if "p_value" in paired
             else MISSING),
            _t_cell(paired), f"**{test['verdict']}**"]


ORDERING_HEADER = ["claim (the paper's)", "mean difference (higher − lower)", "Welch's t over seeds",
                   "same-seed differences (seed: higher − lower)", "paired mean ± sd", "paired t", "holds here?"]


def _orderings_legend(orderings: dict) -> str:
    return (f"Tested on {orderings['metric']} (the primary metric). Mean difference: each model's mean over all "
            "its seeds. Welch's t-test: two-sided, unequal variances, over the seeds. Paired t-test: two-sided, "
            "over the seeds both models have (a seed moves every model together; pairing removes that). "
            "Holds here?: decided by the paired test where 2 or more seeds are shared, by Welch's otherwise; "
            f"significant means p < {orderings['significance_level']:g}, uncorrected for the number of tests.")


def _ladder(orderings: dict) -> list[str]:
    ladder = orderings["table3_ladder"]
    lines = [f"The paper's Table 3 ordering, {' < '.join(TABLE3_LADDER)}, one claim per adjacent step. "
             + _orderings_legend(orderings), ""]
    if ladder["tested"]:
        verdicts = [test["verdict"] for test in ladder["tested"]]
        holds, higher = verdicts.count(HOLDS), verdicts.count(NOT_SIGNIFICANT)
        reversed_ = verdicts.count(REVERSED) + verdicts.count(REVERSED_NOT_SIGNIFICANT)
        lines += [*_table(ORDERING_HEADER, [_ordering_row(test) for test in ladder["tested"]]), "",
                  f"Of {len(verdicts)} tested steps: {holds} hold (higher, significant), {higher} higher but not "
                  f"significant, {reversed_} reversed, {len(verdicts) - holds - higher - reversed_} without a verdict."]
    else:
        lines.append("No adjacent step of the ladder has both its models in `train.models`.")
    if ladder["not_trained"]:
        lines += ["", "Not tested:", "", *(f"- {pair['lower']} < {pair['higher']}: {' and '.join(pair['missing'])} "
                                          "not in `train.models`" for pair in ladder["not_trained"])]
    return lines


def _best_baseline(orderings: dict) -> list[str]:
    test = orderings["best_baseline"]
    if "baseline" not in test:
        return [f"{PROPOSED} against the best baseline: not tested ({test['note']})."]
    return [f"{PROPOSED} against the best of the {test['chosen_from']} by mean user-AUC, **{test['baseline']}** "
            "(the highest sample mean, which biases the test against the gain). " + _orderings_legend(orderings), "",
            *_table(ORDERING_HEADER, [_ordering_row(test)])]


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


def render_report(summary: dict, paper: PaperNumbers | None = None, provenance: list[str] | None = None) -> str:
    """The markdown report. `summary` is what `marn.analysis.report.build_report` returns; `paper` holds the
    numbers quoted from the paper (`marn.analysis.paper.load_paper_numbers`), or None; `provenance` lines (the
    command and wall time that produced the runs, added when results are published) go under the title as a list."""
    paper_numbers = paper.user_auc if paper else {}
    best_lambda0 = (f"The paper's best lambda0 (Fig. 6b, quoted from the paper): {paper.best_lambda0:g}."
                    if paper and paper.best_lambda0 is not None else "")
    seeds = ", ".join(str(run["seed"]) for run in summary["runs"])
    lambda0 = summary["lambda0"]
    lines = [
        f"# MARN (Li et al., WWW 2020): the paper's tables on {summary['dataset']}", "",
        f"Generated by the `report` stage from models trained with seeds {seeds} (each row says how many runs it "
        "pools); user-AUC is eq. 11 on the test split. Do not edit: "
        + ("`python -m flows.paper_set` publishes it." if provenance else "`dvc repro` rewrites it."), "",
        *([*(f"- {line}" for line in provenance), ""] if provenance else []),
        QUOTED if paper else NOT_QUOTED, "",
        "## Table 2: user-AUC of the baselines and MARN", "",
        *_user_auc_table((*TABLE2_BASELINES, PROPOSED), summary, paper_numbers), "",
        *_best_baseline(summary["orderings"]), "",
        "## Table 3: user-AUC of the ablations", "",
        "BaseModel reads the behaviours with a plain GRU; each row changes one thing. The two rows before "
        f"{PROPOSED} are not the paper's: they split APGRU into its property gate and its candidate attention.", "",
        *_user_auc_table(tuple(ABLATIONS), summary, paper_numbers), "",
        "### Does the paper's Table 3 ordering hold here?", "",
        *_ladder(summary["orderings"]), "",
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
        "Every baseline and ablation, five seeds of Table 3, and the lambda0 sweep on the `paper` preset "
        "(presets/paper.yaml), as one DVC experiment that publishes this report (about 1.8 h on 2 CPU cores):", "",
        f"    {PAPER_SET_COMMAND}", "",
    ]
    return "\n".join(lines)
