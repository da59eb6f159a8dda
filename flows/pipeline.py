"""The `marn-train` deployment's flow: the pipeline through DVC up to `evaluate`, as a DVC experiment.

Running through `dvc exp run` keeps DVC's cache and `dvc.lock` the truth: a stage whose inputs did not change
is not rerun, and the run is listed by `dvc exp show` with its parameters and metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.stage import publish_report
from marn.config import PROJECT_ROOT, ConfigError, load_config

DATA_SOURCES = ("synthetic", "amazon2014", "amazon2018", "files")


def experiment_overrides(dataset: str, models: list[str] | None, overrides: list[str] | None) -> list[str]:
    """The `-S key=value` settings of one run; checked against the config schema before DVC starts."""
    if dataset not in DATA_SOURCES:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATA_SOURCES)}")
    settings = [f"data.source={dataset}"]
    if models:
        settings.append("train.models=[" + ",".join(models) + "]")
    settings += list(overrides or [])
    load_config(settings)
    return settings


@task
def dvc_experiment(settings: list[str], target: str, repo: str) -> None:
    logger = get_run_logger()
    command = ["dvc", "exp", "run", *[arg for s in settings for arg in ("-S", s)], target]
    logger.info("running %s in %s", " ".join(command), repo)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    with subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        tail: list[str] = []
        for line in process.stdout:
            line = line.rstrip()
            logger.info(line)
            tail = (tail + [line])[-30:]
    if process.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed with exit code {process.returncode}:\n" + "\n".join(tail))


@flow(name="marn-pipeline")
def pipeline_flow(dataset: str = "synthetic", models: list[str] | None = None,
                  overrides: list[str] | None = None, target: str = "evaluate") -> dict:
    """Fetch → prepare → features → train → evaluate for `dataset` and `models`, with Hydra-style overrides."""
    repo = os.environ.get("MARN_REPO", str(PROJECT_ROOT))
    settings = experiment_overrides(dataset, models, overrides)
    dvc_experiment(settings, target, repo)
    cfg = load_config(path=Path(repo) / "params.yaml")
    metrics_path = Path(repo) / cfg.evaluate.out
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    publish_report("pipeline-metrics", "marn-train: evaluation", {"settings": settings, "metrics": metrics})
    return metrics
