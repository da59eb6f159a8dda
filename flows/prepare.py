"""Stage `prepare`: raw reviews + metadata → item table, sequences, train/test samples (paper §4.1)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.stage import config_from, main, publish_report
from marn.config import resolve_path
from marn.data.prepare import PrepareOptions, prepare


@task
def prepare_task(raw_dir: str, prepared_dir: str, options: PrepareOptions) -> dict:
    return prepare(Path(raw_dir), Path(prepared_dir), options)


@flow(name="marn-prepare")
def prepare_flow(overrides: list[str] | None = None) -> dict:
    cfg = config_from(overrides)
    report = prepare_task(str(resolve_path(cfg.data.raw_dir)), str(resolve_path(cfg.data.prepared_dir)),
                          PrepareOptions.from_config(cfg.data))
    publish_report("prepare-report", "prepare", report)
    return report


if __name__ == "__main__":
    main(prepare_flow)
