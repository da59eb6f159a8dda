"""Stage `train@<model>`: one model of `train.models` (the model name is the first argument)."""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task

from flows.stage import config_from, main, publish_report
from marn.config import resolve_path
from marn.models.registry import check_model_name
from marn.train import train_model


@task
def train_task(cfg, model_name: str, prepared_dir: str, features_dir: str, out_dir: str) -> dict:
    return train_model(cfg, model_name, Path(prepared_dir), Path(features_dir), Path(out_dir))


@flow(name="marn-train-model", flow_run_name="train {model_name}")
def train_flow(model_name: str, overrides: list[str] | None = None) -> dict:
    cfg = config_from(overrides)
    metrics = train_task(cfg, check_model_name(model_name), str(resolve_path(cfg.data.prepared_dir)),
                         str(resolve_path(cfg.features.dir)), str(resolve_path(cfg.train.out_dir)))
    publish_report("train-report", f"train {model_name}", metrics)
    return metrics


if __name__ == "__main__":
    if len(sys.argv) < 2 or "=" in sys.argv[1]:
        sys.exit("usage: python -m flows.train MODEL_NAME [key=value ...]")
    model = sys.argv.pop(1)
    main(lambda overrides: train_flow(model_name=model, overrides=overrides))
