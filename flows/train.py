"""Stage `train@<model>`: one model of `train.models` (the model name is the first argument).

With `train.nproc` above 1 the task starts `python -m marn.train` on that many torchrun ranks and reads
back the summary rank 0 wrote; otherwise it trains in this process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import flow, task

from flows.stage import config_from, main, publish_report
from marn import distributed
from marn.config import resolve_path
from marn.models.registry import check_model_name, model_folder
from marn.train import train_model


@task
def train_task(cfg, model_name: str, prepared_dir: str, features_dir: str, out_dir: str) -> dict:
    return train_model(cfg, model_name, Path(prepared_dir), Path(features_dir), Path(out_dir))


@task
def train_on_ranks_task(nproc: int, model_name: str, overrides: list[str], out_dir: str) -> dict:
    distributed.run_with_torchrun(nproc, "marn.train", [model_name, *overrides])
    return json.loads((model_folder(out_dir, model_name) / "train_metrics.json").read_text())


@flow(name="marn-train-model", flow_run_name="train {model_name}")
def train_flow(model_name: str, overrides: list[str] | None = None) -> dict:
    cfg = config_from(overrides)
    model_name = check_model_name(model_name)
    out_dir = str(resolve_path(cfg.train.out_dir))
    if int(cfg.train.nproc) > 1:
        metrics = train_on_ranks_task(int(cfg.train.nproc), model_name, list(overrides or []), out_dir)
    else:
        metrics = train_task(cfg, model_name, str(resolve_path(cfg.data.prepared_dir)),
                             str(resolve_path(cfg.features.dir)), out_dir)
    publish_report("train-report", f"train {model_name}", metrics)
    return metrics


if __name__ == "__main__":
    if len(sys.argv) < 2 or "=" in sys.argv[1]:
        sys.exit("usage: python -m flows.train MODEL_NAME [key=value ...]")
    model = sys.argv.pop(1)
    main(lambda overrides: train_flow(model_name=model, overrides=overrides), check=lambda cfg: check_model_name(model))
