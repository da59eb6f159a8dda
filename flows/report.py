"""Stage `report`: the paper's Tables 2-5 and Figs. 5-6 (reports/) from every trained run."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.stage import config_from, main, publish_report
from marn.analysis.report import write_report
from marn.config import resolve_path


@task
def report_task(cfg, prepared_dir: str, features_dir: str, models_root: str, out_dir: str) -> dict:
    return write_report(cfg, Path(prepared_dir), Path(features_dir), Path(models_root), Path(out_dir))


@flow(name="marn-report")
def report_flow(overrides: list[str] | None = None) -> dict:
    cfg = config_from(overrides)
    summary = report_task(cfg, str(resolve_path(cfg.data.prepared_dir)), str(resolve_path(cfg.features.dir)),
                          str(resolve_path(cfg.train.out_dir)), str(resolve_path(cfg.analysis.out_dir)))
    publish_report("report", "paper tables and figures", summary)
    return summary


if __name__ == "__main__":
    main(report_flow)
