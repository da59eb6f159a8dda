"""The whole pipeline as a user runs it: `dvc repro` in a fresh repository, then again with nothing to do."""

from __future__ import annotations

import json
import sys

import pytest

from pipeline_support import make_tiny_repo, run

pytestmark = pytest.mark.slow
DVC = [sys.executable, "-m", "dvc"]


def test_dvc_repro_end_to_end_then_nothing_to_do(tmp_path):
    repo = make_tiny_repo(tmp_path / "repo")
    run(DVC + ["repro"], repo, timeout=1200)

    metrics = json.loads((repo / "metrics" / "eval.json").read_text())
    assert set(metrics) == {"BaseModel+IDs", "MARN"}
    for name, values in metrics.items():
        assert 0.0 <= values["user_auc"] <= 1.0 and values["n_samples"] > 0, name
    prepared = json.loads((repo / "data" / "prepared" / "report.json").read_text())
    assert prepared["test_samples"] == metrics["MARN"]["n_samples"]

    again = run(DVC + ["repro"], repo)
    assert "Data and pipelines are up to date" in again.stdout, again.stdout

    status = run(DVC + ["status"], repo)
    assert "up to date" in status.stdout.lower(), status.stdout
    shown = run(DVC + ["metrics", "show", "--json"], repo)
    assert "user_auc" in shown.stdout

    # A training parameter reruns training and what follows, never the data stages.
    changed = run(DVC + ["exp", "run", "-S", "train.lambda0=0.1"], repo, timeout=1200)
    ran = [line for line in changed.stdout.splitlines() if line.startswith("Running stage")]
    assert any("train@MARN" in line for line in ran), changed.stdout
    assert not [line for line in ran if any(f"'{stage}'" in line for stage in ("fetch", "prepare", "features"))], ran
