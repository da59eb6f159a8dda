"""What the paper's tables compare: the model rows of Tables 2-5, the best-baseline t-test, and the paper's own
numbers when a file of them is given (`analysis.paper_numbers`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from marn.analysis.significance import welch_t_test

PROPOSED = "MARN"
TABLE2_BASELINES = ("LR", "FM", "YoutubeNet", "xDeepFM", "DUPN", "DIEN", "DMF", "MMSS", "NAML")
TABLE3_ABLATIONS = ("BaseModel+IDs", "BaseModel+IMAGE", "BaseModel+CONC", "BaseModel+MAF", "BaseModel+MAF+ADV",
                    "BaseModel+MAF+DDMA")
UNIMODAL_BASE = "BaseModel+IDs"  # the paper's reference in Tables 4 and 5


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


def load_paper_numbers(path: str | Path) -> dict[str, dict[str, float]]:
    """{dataset: {model: user-AUC}} from the `user_auc` mapping of a YAML or JSON file; names are checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"analysis.paper_numbers: {path} not found")
    content = OmegaConf.load(path)
    user_auc = content.get("user_auc") if isinstance(content, DictConfig) else None
    if not isinstance(user_auc, DictConfig):
        raise ValueError(f"{path}: expected a mapping `user_auc: {{dataset: {{model: value}}}}`")
    known = (*TABLE2_BASELINES, *TABLE3_ABLATIONS, PROPOSED)
    numbers: dict[str, dict[str, float]] = {}
    for dataset, per_model in user_auc.items():
        if not isinstance(per_model, DictConfig):
            raise ValueError(f"{path}: user_auc.{dataset} must map model names to values")
        for model, value in per_model.items():
            if model not in known:
                raise ValueError(f"{path}: user_auc.{dataset}.{model} is not a model of Tables 2-3 "
                                 f"({', '.join(known)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{path}: user_auc.{dataset}.{model} = {value!r} is not an AUC in [0, 1]")
            numbers.setdefault(str(dataset), {})[str(model)] = float(value)
    return numbers
