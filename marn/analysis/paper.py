"""What the paper's tables compare: the model rows of Tables 2-5, the tests of the paper's orderings (each step of
Table 3's ladder and MARN against the best baseline), and the paper's own numbers when a file of them is given
(`analysis.paper_numbers`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from marn.analysis.significance import paired_t_test, welch_t_test
from marn.models.baselines import BASELINES
from marn.models.registry import ABLATIONS, TABLE3_LADDER

PROPOSED = "MARN"
TABLE2_BASELINES = tuple(BASELINES)  # Table 2's rows, in the paper's order
UNIMODAL_BASE = "BaseModel+IDs"  # the paper's reference in Tables 4 and 5
POPULARITY_LEVELS = 10  # Table 4's levels
SIGNIFICANCE_LEVEL = 0.05  # two-sided, as the paper's Table 2 marks MARN against the best baseline
HOLDS = "holds (higher, p < 0.05)"
NOT_SIGNIFICANT = "higher, not significant"
REVERSED = "reversed (lower, p < 0.05)"
REVERSED_NOT_SIGNIFICANT = "reversed (lower, not significant)"
EQUAL = "not higher (equal means)"
NEEDS_SEEDS = "n/a (needs ≥2 seeds)"


def _verdict(test: dict) -> str:
    if test["t"] == 0:
        return EQUAL
    significant = test["p_value"] < SIGNIFICANCE_LEVEL
    if test["t"] > 0:
        return HOLDS if significant else NOT_SIGNIFICANT
    return REVERSED if significant else REVERSED_NOT_SIGNIFICANT


def ordering_test(lower: str, higher: str, by_seed: dict[str, dict[int, float]]) -> dict:
    """The paper's claim `lower < higher` on per-seed values (`by_seed[model][seed]`).

    Returns the mean difference (higher - lower, each over all its seeds), Welch's t-test over those seeds, the
    same-seed differences with the paired t-test over them, and a verdict: the paired test's when the two models
    share at least 2 seeds (it removes what a seed does to both), Welch's otherwise. A test that cannot be computed
    holds a "note" instead of t, df and p.
    """
    upper_runs, lower_runs = by_seed[higher], by_seed[lower]
    seeds = sorted(set(upper_runs) & set(lower_runs))
    result = {"lower": lower, "higher": higher,
              "mean_difference": float(np.mean(list(upper_runs.values())) - np.mean(list(lower_runs.values()))),
              "seeds": seeds, "same_seed_differences": [upper_runs[s] - lower_runs[s] for s in seeds]}
    try:
        welch = welch_t_test(list(upper_runs.values()), list(lower_runs.values()))
        result["welch"] = {"t": welch.t, "df": welch.df, "p_value": welch.p_value}
    except ValueError as err:
        result["welch"] = {"note": str(err)}
    try:
        paired = paired_t_test([upper_runs[s] for s in seeds], [lower_runs[s] for s in seeds])
        result["paired"] = {"t": paired.t, "df": paired.df, "p_value": paired.p_value,
                            "mean_difference": paired.mean_difference, "sd_difference": paired.sd_difference}
    except ValueError as err:
        result["paired"] = {"note": str(err)}
    decided_by = next((name for name in ("paired", "welch") if "p_value" in result[name]), None)
    if decided_by is not None:
        verdict = _verdict(result[decided_by])
    elif min(len(upper_runs), len(lower_runs)) < 2:
        verdict = NEEDS_SEEDS
    else:
        verdict = f"n/a ({result['paired']['note']})"
    return {**result, "decided_by": decided_by, "verdict": verdict}


def table3_ladder_tests(by_seed: dict[str, dict[int, float]]) -> dict:
    """`ordering_test` for every adjacent pair of the paper's Table 3 ladder with both models trained, and the
    pairs left untested because a model of theirs is not in train.models."""
    pairs = list(zip(TABLE3_LADDER, TABLE3_LADDER[1:]))
    return {"tested": [ordering_test(lower, higher, by_seed) for lower, higher in pairs
                       if lower in by_seed and higher in by_seed],
            "not_trained": [{"lower": lower, "higher": higher,
                             "missing": [m for m in (lower, higher) if m not in by_seed]}
                            for lower, higher in pairs if lower not in by_seed or higher not in by_seed]}


def best_baseline_test(by_seed: dict[str, dict[int, float]]) -> dict:
    """`ordering_test` of the claim "best baseline < MARN", the baseline being the trained model of Table 2 with
    the highest mean among those with the most seeds (a one-seed baseline cannot be tested against five seeds);
    when none is trained, the best other trained model.

    Returns {"baseline", "chosen_from", ...the test} or {"note"} saying why there is no test.
    """
    if PROPOSED not in by_seed:
        return {"note": f"{PROPOSED} is not in train.models"}
    others = {m: runs for m, runs in by_seed.items() if m != PROPOSED}
    table2 = {m: runs for m, runs in others.items() if m in BASELINES}
    pool, chosen_from = (table2, "Table 2 baselines") if table2 else (others, "the other trained models")
    if not pool:
        return {"note": f"no model besides {PROPOSED} is trained"}
    most_seeds = max(len(runs) for runs in pool.values())
    pool = {m: runs for m, runs in pool.items() if len(runs) == most_seeds}
    chosen_from += f" with {most_seeds} seed{'s' if most_seeds > 1 else ''}"
    baseline = max(pool, key=lambda m: np.mean(list(pool[m].values())))
    return {"baseline": baseline, "chosen_from": chosen_from, **ordering_test(baseline, PROPOSED, by_seed)}


@dataclass(frozen=True)
class PaperNumbers:
    """The paper's own numbers that the report shows beside ours, each keyed by the paper's dataset name."""

    user_auc: dict[str, dict[str, float]]  # Tables 2-3: {dataset: {model: user-AUC}}
    popularity_auc: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # Table 4: AUC per level
    recall_at_n: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # Table 5: {dataset: {"n", model}}
    best_lambda0: float | None = None  # Fig. 6(b)


DEFAULT_PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")
_KNOWN_MODELS = (*BASELINES, *ABLATIONS)


def _fraction(path: Path, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{path}: {key} = {value!r} is not an AUC in [0, 1]")
    return float(value)


def _mapping(path: Path, content: DictConfig, key: str) -> DictConfig:
    value = content.get(key)
    if value is not None and not isinstance(value, DictConfig):
        raise ValueError(f"{path}: `{key}` must be a mapping {{dataset: ...}}")
    return value if value is not None else OmegaConf.create({})


def _per_model(path: Path, key: str, per_model, models: tuple[str, ...]) -> DictConfig:
    if not isinstance(per_model, DictConfig):
        raise ValueError(f"{path}: {key} must map model names to values")
    for model in per_model:
        if model not in models:
            raise ValueError(f"{path}: {key}.{model} is not a model of Tables 2-3 ({', '.join(_KNOWN_MODELS)})")
    return per_model


def _series(path: Path, key: str, values, length: int | None) -> list[float]:
    if not isinstance(values, ListConfig) or (length is not None and len(values) != length):
        raise ValueError(f"{path}: {key} must be a list of {length or 'some'} values")
    return [_fraction(path, f"{key}[{i}]", v) for i, v in enumerate(values)]


def load_paper_numbers(path: str | Path) -> PaperNumbers:
    """The paper's numbers from a YAML or JSON file laid out as `paper_numbers.yaml`; names and ranges are checked.

    `user_auc` (Tables 2-3) is required; `popularity_auc` (Table 4, 10 levels), `recall_at_n` (Table 5, one value
    per `n`) and `best_lambda0` (Fig. 6b) are optional.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"analysis.paper_numbers: {path} not found")
    content = OmegaConf.load(path)
    if not isinstance(content, DictConfig) or not isinstance(content.get("user_auc"), DictConfig):
        raise ValueError(f"{path}: expected a mapping `user_auc: {{dataset: {{model: value}}}}`")
    user_auc = {str(dataset): {str(model): _fraction(path, f"user_auc.{dataset}.{model}", value)
                               for model, value in _per_model(path, f"user_auc.{dataset}", per_model,
                                                              _KNOWN_MODELS).items()}
                for dataset, per_model in content.user_auc.items()}
    popularity_auc = {
        str(dataset): {str(model): _series(path, f"popularity_auc.{dataset}.{model}", values, POPULARITY_LEVELS)
                       for model, values in _per_model(path, f"popularity_auc.{dataset}", per_model,
                                                       _KNOWN_MODELS).items()}
        for dataset, per_model in _mapping(path, content, "popularity_auc").items()}
    recall_at_n = {}
    for dataset, per_model in _mapping(path, content, "recall_at_n").items():
        per_model = _per_model(path, f"recall_at_n.{dataset}", per_model, (*_KNOWN_MODELS, "RANDOM", "n"))
        cutoffs = per_model.get("n")
        if not isinstance(cutoffs, ListConfig) or not all(isinstance(n, int) and n > 0 for n in cutoffs):
            raise ValueError(f"{path}: recall_at_n.{dataset}.n must be a list of positive cutoffs")
        recall_at_n[str(dataset)] = {"n": [int(n) for n in cutoffs], **{
            str(model): _series(path, f"recall_at_n.{dataset}.{model}", values, len(cutoffs))
            for model, values in per_model.items() if model != "n"}}
    best_lambda0 = content.get("best_lambda0")
    if best_lambda0 is not None and (isinstance(best_lambda0, bool) or not isinstance(best_lambda0, (int, float))):
        raise ValueError(f"{path}: best_lambda0 = {best_lambda0!r} is not a number")
    return PaperNumbers(user_auc, popularity_auc, recall_at_n, None if best_lambda0 is None else float(best_lambda0))
