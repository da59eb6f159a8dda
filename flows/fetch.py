"""Stage `fetch`: the raw Amazon-format files of `data.source` into `data.raw_dir`."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.stage import config_from, main, publish_report
from marn.config import resolve_path
from marn.data.fetch import fetch


@task(retries=2, retry_delay_seconds=10)
def fetch_task(data_cfg, raw_dir: str) -> dict:
    return fetch(data_cfg, Path(raw_dir))


@flow(name="marn-fetch")
def fetch_flow(overrides: list[str] | None = None) -> dict:
    cfg = config_from(overrides)
    report = fetch_task(cfg.data, str(resolve_path(cfg.data.raw_dir)))
    publish_report("fetch-report", "fetch", report)
    return report


if __name__ == "__main__":
    main(fetch_flow)
