"""What the paper's tables compare: the model rows of Tables 2-5, the best-baseline t-test, and the paper's own
numbers when a file of them is given (`analysis.paper_numbers`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from marn.analysis.significance import welch_t_test

PROPOSED = "MARN"
TABLE2_BASELINES = ("LR", "FM", "YoutubeNet", "xDeepFM", "DUPN", "DIEN", "DMF", "MMSS", "NAML")
TABLE3_ABLATIONS = ("BaseModel+IDs", "BaseModel+IMAGE", "BaseModel+CONC", "BaseModel+MAF", "BaseModel+MAF+ADV",
                    "BaseModel+MAF+DDMA")
UNIMODAL_BASE = "BaseModel+IDs"  # the paper's reference in Tables 4 and 5
POPULARITY_LEVELS = 10  # Table 4's levels


def best_baseline_test(user_auc: dict[str, list[float]]) -> dict:
    """Welch's t-test of MARN's user-AUC over runs against the baseline with the highest mean.

    The baseline is the best trained model of Table 2; when none is trained, the best other trained model.
    Returns {"baseline", "chosen_from", ...} with {"t", "df", "p_value"} or a "note" saying why there is no test.
    """
    if PROPOSED not in user_auc:
        return {"note": f"{PROPOSED} is not in train.models"}
    others = {m: v for m, v in user_auc.items() if m != PROPOSED}
    table2 = {m: v for m, v in others.items() if m in TABLE2_BASELINES}
    pool, chosen_from = (table2, "Table 2 baselines") if table2 else (others, "the other trained models")
    if not pool:
        return {"note": f"no model besides {PROPOSED} is trained"}
    baseline = max(pool, key=lambda m: sum(pool[m]) / len(pool[m]))
    result = {"baseline": baseline, "chosen_from": chosen_from}
    try:
        test = welch_t_test(user_auc[PROPOSED], pool[baseline])
    except ValueError as err:
        return {**result, "note": str(err)}
    return {**result, "t": test.t, "df": test.df, "p_value": test.p_value}


@dataclass(frozen=True)
class PaperNumbers:
    """The paper's own numbers that the report shows beside ours, each keyed by the paper's dataset name."""

    user_auc: dict[str, dict[str, float]]  # Tables 2-3: {dataset: {model: user-AUC}}
    popularity_auc: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # Table 4: AUC per level
    recall_at_n: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # Table 5: {dataset: {"n", model}}
    best_lambda0: float | None = None  # Fig. 6(b)


DEFAULT_PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")
_KNOWN_MODELS = (*TABLE2_BASELINES, *TABLE3_ABLATIONS, PROPOSED)


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
