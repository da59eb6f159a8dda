"""The one Prefect wrapper of the stages: `python -m flows.stage STAGE [MODEL] [key=value ...]` runs
`marn.pipeline.STAGES[STAGE]` as the flow `marn-<stage>` with one task, and publishes its report as an artifact.

The config is loaded and checked before Prefect starts, so a mistake exits with one `error: ...` line and no server.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402

from marn.config import ConfigError, Paths  # noqa: E402
from marn.pipeline import Stage, load_params, parse_command  # noqa: E402

RETRIES = {"fetch": 2}  # downloads may fail for a moment; the other stages fail for a reason
RETRY_DELAY_S = 10


def publish_report(key: str, title: str, report: dict) -> None:
    """The stage's numbers as a markdown artifact in the Prefect UI (scalars as a table, the rest as JSON)."""
    scalars = {k: v for k, v in report.items() if isinstance(v, (int, float, str, bool)) or v is None}
    nested = {k: v for k, v in report.items() if k not in scalars}
    lines = [f"# {title}", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in scalars.items()]
    if nested:
        lines += ["", "```json", json.dumps(nested, indent=2, default=str)[:20000], "```"]
    create_markdown_artifact(markdown="\n".join(lines), key=key, description=title)


def stage_flow(stage: Stage):
    """The flow `marn-<stage>`: one task running the stage function, then its report as an artifact."""
    run_task = task(stage.run, name=stage.name, retries=RETRIES.get(stage.name, 0), retry_delay_seconds=RETRY_DELAY_S)

    def run_name() -> str:
        from prefect.runtime import flow_run

        return " ".join([stage.name, *flow_run.parameters["stage_args"]])

    def run_stage(stage_args: list[str], overrides: list[str]) -> dict:
        config = load_params(overrides)
        report = run_task(config, Paths.from_params(config), *stage_args)
        publish_report(f"{stage.name.replace('_', '-')}-report", run_name(), report)
        return report

    return flow(run_stage, name=f"marn-{stage.name}", flow_run_name=run_name)


def main(argv: list[str] | None = None) -> None:
    try:
        stage, stage_args, overrides = parse_command(sys.argv[1:] if argv is None else argv)
        load_params(overrides)  # a mistake stops here, before a Prefect server starts
    except ConfigError as err:
        sys.exit(f"error: {err}")
    stage_flow(stage)(stage_args, overrides)


if __name__ == "__main__":
    main()
