"""Stage `features`: VGG16 fc7 image vectors and title word vectors for every prepared item."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from flows.stage import config_from, main, publish_report
from marn.config import resolve_path
from marn.features import build_features


@task
def features_task(features_cfg, prepared_dir: str, out_dir: str, raw_dir: str) -> dict:
    return build_features(features_cfg, Path(prepared_dir), Path(out_dir), raw_dir=Path(raw_dir))


@flow(name="marn-features")
def features_flow(overrides: list[str] | None = None) -> dict:
    cfg = config_from(overrides)
    report = features_task(cfg.features, str(resolve_path(cfg.data.prepared_dir)),
                           str(resolve_path(cfg.features.dir)), str(resolve_path(cfg.data.raw_dir)))
    publish_report("features-report", "features", report)
    return report


if __name__ == "__main__":
    main(features_flow)
