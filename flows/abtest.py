"""Stage `abtest`: an offline simulation of the paper's online A/B test (Table 6), CTR and GMV lift."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.stage import config_from, main, publish_report
from marn.abtest import check_abtest_config, run_abtest
from marn.config import resolve_path


@task
def abtest_task(cfg, prepared_dir: str, features_dir: str, models_dir: str, raw_dir: str, out_path: str,
                plot_path: str) -> dict:
    return run_abtest(cfg, Path(prepared_dir), Path(features_dir), Path(models_dir), Path(raw_dir), Path(out_path),
                      Path(plot_path))


@flow(name="marn-abtest")
def abtest_flow(overrides: list[str] | None = None) -> dict:
    cfg = config_from(overrides)
    check_abtest_config(cfg.abtest)  # a bad arm or slate fails before any data is read
    report = abtest_task(cfg, str(resolve_path(cfg.data.prepared_dir)), str(resolve_path(cfg.features.dir)),
                         str(resolve_path(cfg.train.out_dir)), str(resolve_path(cfg.data.raw_dir)),
                         str(resolve_path(cfg.abtest.out)), str(resolve_path(cfg.abtest.plot)))
    publish_report("abtest-report", "abtest (offline simulation of an A/B test)", report)
    return report


if __name__ == "__main__":
    main(abtest_flow, check=lambda cfg: check_abtest_config(cfg.abtest))
