"""What every stage command shares: Hydra-style overrides from argv, the checked config, a report artifact."""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect.artifacts import create_markdown_artifact  # noqa: E402

from marn.config import load_config  # noqa: E402


def config_from(overrides: list[str] | None):
    return load_config(list(overrides or []))


def publish_report(key: str, title: str, report: dict) -> None:
    """The stage's numbers as a markdown artifact in the Prefect UI (scalars as a table, the rest as JSON)."""
    scalars = {k: v for k, v in report.items() if isinstance(v, (int, float, str, bool)) or v is None}
    nested = {k: v for k, v in report.items() if k not in scalars}
    lines = [f"# {title}", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in scalars.items()]
    if nested:
        lines += ["", "```json", json.dumps(nested, indent=2, default=str)[:20000], "```"]
    create_markdown_artifact(markdown="\n".join(lines), key=key, description=title)


def main(stage_flow: Callable, check: Callable | None = None) -> None:
    """Run a stage flow with `sys.argv[1:]` as Hydra overrides; a bad config exits with its message.

    `check(cfg)` is the stage's own validation, run like the schema check before Prefect starts.
    """
    overrides = sys.argv[1:]
    try:
        cfg = config_from(overrides)
        if check is not None:
            check(cfg)
    except ValueError as err:  # marn.config.ConfigError is a ValueError
        sys.exit(f"error: {err}")
    stage_flow(overrides=overrides)
