"""A throw-away copy of this repository with tiny params, for tests that run the real pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Small enough that the whole pipeline runs in about a minute; every stage still does its real work.
TINY_PARAMS = {
    "data": {"max_len": 8, "synthetic": {"n_users": 80, "n_items": 40, "n_categories": 3, "n_brands": 4,
                                         "max_seq_len": 12, "image_size": 32}},
    "features": {"batch_size": 20, "image_size": 64, "download_retries": 0, "word_dim": 16, "title_len": 8,
                 "word2vec": {"epochs": 1}},
    "train": {"epochs": 1, "hidden": 16, "embed_dim": 8, "title_filters": 4, "log_every": 5},
    "evaluate": {"batch_size": 64},
    "abtest": {"max_users": 60, "days": 3, "requests_per_user": 2.0, "candidates": 8, "slate_size": 3},
}


def merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def pipeline_env(**extra: str) -> dict[str, str]:
    """This interpreter's environment first on PATH (DVC runs `python -m flows...`), the op build cache shared."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MARN_BUILD_DIR": os.environ.get("MARN_BUILD_DIR", str(PROJECT_ROOT / ".build")), **extra}
    env.pop("MARN_PARAMS", None)
    return env


def run(command: list[str], cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env or pipeline_env(), capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def make_tiny_repo(dest: Path, extra_params: dict | None = None) -> Path:
    """Copy the project's tracked and unignored files to `dest`, shrink params.yaml, commit it as a new repo."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    skip = ("dvc.lock", "metrics/", "plots/", "models/", "reports/")
    for name in filter(None, listed):
        source = PROJECT_ROOT / name
        if name.startswith(skip) or not source.is_file():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    params_path = dest / "params.yaml"
    params = merge(merge(yaml.safe_load(params_path.read_text()), TINY_PARAMS), extra_params or {})
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run(["git", "init", "-q", "-b", "main"], dest)
    run(git + ["add", "-A"], dest)
    run(git + ["commit", "-q", "-m", "tiny copy"], dest)
    return dest
