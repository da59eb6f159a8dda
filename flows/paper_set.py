"""The paper set: every model of the `paper` preset, its seeds and the lambda0 sweep as one DVC experiment, then
its report published as the project's headline result, `reports/paper_tables.md`, with the command and wall time.

    python -m flows.paper_set [--preset presets/paper.yaml] [--target report] [key=value ...]

The preset's keys (and any `key=value` after it) become `dvc exp run --temp -n marn-paper-set-<time> -S ...`,
run like the `marn-train` deployment's runs (flows/pipeline.py): in a temp copy under the same lock, so the
checkout's params.yaml, dvc.lock and outputs are never written; only `reports/` is, by the publish step.
Finished stages stay in DVC's run cache: after a kill, the same command repeats only the unfinished stages.
`--target` other than `report` (e.g. `train_seeds`) trains without publishing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger

from flows.pipeline import PAPER_SET_PREFIX, committed_bytes, dvc_experiment, experiment_ref
from marn.analysis.paper import load_paper_numbers
from marn.analysis.report import FIGURES
from marn.analysis.tables import render_report
from marn.config import PROJECT_ROOT, ConfigError
from marn.pipeline import load_params

DEFAULT_PRESET = Path("presets") / "paper.yaml"


def override_value(value) -> str:
    """A preset value as Hydra's override grammar writes it (lists in brackets, booleans in lower case)."""
    if isinstance(value, list):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def preset_settings(preset: Path, extra: list[str]) -> list[str]:
    """`key=value` settings of the preset file, then `extra`; checked against the config schema."""
    try:
        entries = yaml.safe_load(preset.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{preset}: cannot read the preset ({err})") from err
    if not isinstance(entries, dict) or not all(isinstance(key, str) for key in entries):
        raise ConfigError(f"{preset}: a preset is a mapping of params.yaml keys (data.max_len: 20) to values")
    settings = [f"{key}={override_value(value)}" for key, value in entries.items()] + list(extra)
    load_params(settings)
    return settings


def command_line(settings: list[str], target: str, name: str) -> str:
    return " ".join(["dvc exp run --temp -n", name, *(f"-S '{s}'" for s in settings), target])


def publish(repo: Path, name: str, out_dir: Path, paper_numbers: str | None, provenance: list[str]) -> list[Path]:
    """Copy the experiment's report into `out_dir`, the markdown rendered again with the `provenance` lines."""
    ref = experiment_ref(repo, name)
    if ref is None:
        raise FileNotFoundError(f"no experiment {name!r} in {repo} (`dvc exp show` lists the experiments)")
    committed = committed_bytes(repo, ref, f"{out_dir.as_posix()}/paper_tables.json")
    if committed is None:
        raise FileNotFoundError(f"experiment {name!r} has no {out_dir}/paper_tables.json: did its report stage run?")
    summary = json.loads(committed)
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", ref, f"{out_dir.as_posix()}/{FIGURES}/"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    written = []
    target = repo / out_dir
    (target / FIGURES).mkdir(parents=True, exist_ok=True)
    for stale in (target / FIGURES).iterdir():  # a figure of an earlier paper set must not outlive it
        stale.unlink()
    for path in listed:
        (repo / path).write_bytes(committed_bytes(repo, ref, path))
        written.append(repo / path)
    (target / "paper_tables.json").write_bytes(committed)
    numbers = load_paper_numbers(Path(paper_numbers)) if paper_numbers else None
    (target / "paper_tables.md").write_text(render_report(summary, numbers, provenance))
    return [*written, target / "paper_tables.json", target / "paper_tables.md"]


@flow(name="marn-paper-set")
def paper_set_flow(settings: list[str], target: str = "report") -> int:
    logger = get_run_logger()
    repo = Path(os.environ.get("MARN_REPO", str(PROJECT_ROOT))).resolve()
    name = PAPER_SET_PREFIX + dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    # the commit DVC copies into the experiment, before anything is committed while it runs
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    started = time.monotonic()
    code = dvc_experiment(settings, target, str(repo), name)
    minutes = (time.monotonic() - started) / 60
    if code != 0:
        logger.error("error: dvc exp run failed with exit code %d after %.1f min; run the same command again to "
                     "continue from the finished stages", code, minutes)
        return code
    logger.info("experiment %s finished in %.1f min", name, minutes)
    if target == "report":
        config = load_params(settings)
        provenance = [f"command: `python -m flows.paper_set` (= `{command_line(settings, target, name)}`)",
                      f"wall time: {minutes:.0f} min on this project's 2-core CPU machine, stages restored from "
                      "DVC's run cache included (a rerun with unchanged code and data restores all of them)",
                      f"experiment `{name}` from commit {head} (`dvc exp show` lists it)"]
        for path in publish(repo, name, Path(config.analysis.out_dir), config.analysis.paper_numbers, provenance):
            logger.info("published %s", path.relative_to(repo))
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", type=Path, default=PROJECT_ROOT / DEFAULT_PRESET)
    parser.add_argument("--target", default="report", help="the stage to reproduce, with its upstream stages")
    parser.add_argument("overrides", nargs="*", help="key=value settings after the preset's")
    args = parser.parse_args(argv)
    try:
        settings = preset_settings(args.preset, args.overrides)
    except ValueError as err:  # marn.config.ConfigError is a ValueError
        sys.exit(f"error: {err}")
    sys.exit(paper_set_flow(settings, args.target))


if __name__ == "__main__":
    main()
