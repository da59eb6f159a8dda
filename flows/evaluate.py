"""Stage `evaluate`: user-AUC (eq. 11), AUC, gAUC and logloss of every trained model on the test split."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.stage import config_from, main, publish_report
from marn.config import resolve_path
from marn.evaluate import evaluate_models


@task
def evaluate_task(cfg, prepared_dir: str, features_dir: str, models_dir: str, out_path: str) -> dict:
    return evaluate_models(cfg, list(cfg.train.models), Path(prepared_dir), Path(features_dir),
                           Path(models_dir), Path(out_path))


@flow(name="marn-evaluate")
def evaluate_flow(overrides: list[str] | None = None) -> dict:
    cfg = config_from(overrides)
    metrics = evaluate_task(cfg, str(resolve_path(cfg.data.prepared_dir)), str(resolve_path(cfg.features.dir)),
                            str(resolve_path(cfg.train.out_dir)), str(resolve_path(cfg.evaluate.out)))
    publish_report("evaluate-report", "evaluate", metrics)
    return metrics


if __name__ == "__main__":
    main(evaluate_flow)
