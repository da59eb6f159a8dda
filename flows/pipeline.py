"""The `marn-train` deployment's flow: the pipeline through DVC up to `evaluate`, as an isolated DVC experiment.

Each run is `dvc exp run --temp`: DVC copies the checkout (its HEAD plus uncommitted changes) into a
folder under `.dvc/tmp/exps`, applies the run's `-S` overrides to the copy's params.yaml, reproduces there
with the shared cache, and keeps the result as experiment `marn-train-<run id>`. The checkout's params.yaml,
dvc.lock and outputs are never written: `dvc exp show` lists the run, `dvc exp apply <name>` brings it in.
The overrides are checked against the config schema before DVC starts. Runs of one checkout take turns on
a lock file; a run killed with its server leaves only its copy, which the next run deletes.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Failed

from flows.stage import publish_report
from marn.config import PROJECT_ROOT, ConfigError
from marn.pipeline import load_params

EXPERIMENT_PREFIX = "marn-train-"
PAPER_SET_PREFIX = "marn-paper-set-"  # flows/paper_set.py's runs, which take turns on LOCK_FILE too
LOCK_FILE = Path(".dvc") / "tmp" / "marn-train.lock"  # held by the run and its `dvc` process while they live
_DVC_SUCCESS = 3  # DVC's TaskStatus: PENDING 0, PREPARING 1, RUNNING 2, SUCCESS 3, then FAILED, CANCELED, FINISHED


def experiment_overrides(repo: Path, dataset: str, models: list[str] | None,
                         overrides: list[str] | None) -> list[str]:
    """The `-S key=value` settings of one run, checked with the repo's params.yaml before DVC starts."""
    settings = [f"data.source={dataset}"]
    if models:
        settings.append("train.models=[" + ",".join(models) + "]")
    settings += list(overrides or [])
    load_params(settings, path=repo / "params.yaml")
    return settings


def remove_dead_experiments(repo: Path) -> list[str]:
    """Delete the temp copies of this deployment's runs that never finished (their process was killed).

    Called with the lock held, so no run of this deployment is alive. DVC deletes the copy of a run that ends,
    and lists a run as running while its record says so and its copy exists: deleting the copy of a killed
    run ends that listing. Returns the names of the runs whose copy was deleted.
    """
    removed = []
    for info_path in sorted((repo / ".dvc" / "tmp" / "exps").glob("**/*.run")):  # DVC keeps two records a run
        try:
            info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        name, root = str(info.get("name") or ""), info.get("root_dir")
        unfinished = info.get("status", _DVC_SUCCESS) < _DVC_SUCCESS and root and Path(root).is_dir()
        if name.startswith((EXPERIMENT_PREFIX, PAPER_SET_PREFIX)) and unfinished:
            shutil.rmtree(root, ignore_errors=True)
            removed.append(name)
    return sorted(set(removed))


def experiment_ref(repo: Path, name: str) -> str | None:
    """The Git ref of experiment `name` (DVC commits its params, dvc.lock and uncached outputs there), or None."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo,
                          capture_output=True, text=True, check=True).stdout.split()
    return next((r for r in refs if r.rsplit("/", 1)[-1] == name), None)


def committed_bytes(repo: Path, ref: str, path: str) -> bytes | None:
    """The bytes of `path` in the Git commit `ref`, or None."""
    shown = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=repo, capture_output=True)
    return shown.stdout if shown.returncode == 0 else None


def experiment_bytes(repo: Path, name: str, path: str) -> bytes | None:
    """The bytes of `path` as experiment `name` committed it, or None."""
    ref = experiment_ref(repo, name)
    return None if ref is None else committed_bytes(repo, ref, path)


def experiment_file(repo: Path, name: str, path: str) -> str | None:
    """The text of `path` as experiment `name` committed it (metrics are committed to Git), or None."""
    content = experiment_bytes(repo, name, path)
    return None if content is None else content.decode()


@task
def dvc_experiment(settings: list[str], target: str, repo: str, name: str) -> int:
    """`dvc exp run --temp` under the deployment's lock, its output streamed to the run's log; the exit code.
    `target`: the stage to reproduce with its upstream stages."""
    logger = get_run_logger()
    lock_path = Path(repo) / LOCK_FILE
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another marn-train run is using %s; waiting for it to finish", repo)
            fcntl.flock(lock, fcntl.LOCK_EX)
        for dead in remove_dead_experiments(Path(repo)):
            logger.info("removed the temp copy of killed run %s", dead)
        command = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name,
                   *[arg for s in settings for arg in ("-S", s)], target]
        logger.info("running %s in %s", " ".join(command[1:]), repo)
        # every stage's flow reports to this run's Prefect server instead of starting a temporary one (~20 s each)
        env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PREFECT_API_URL": str(get_client(sync_client=True).api_url)}
        # the child inherits the lock, so a killed flow process does not free it while DVC still works
        with subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1, pass_fds=(lock.fileno(),)) as process:
            for line in process.stdout:
                logger.info(line.rstrip())
        return process.returncode


@flow(name="marn-pipeline")
def pipeline_flow(dataset: str = "synthetic", models: list[str] | None = None,
                  overrides: list[str] | None = None, target: str = "evaluate"):
    """Fetch → prepare → features → train → evaluate for `dataset` and `models`, with Hydra-style overrides."""
    logger = get_run_logger()
    repo = Path(os.environ.get("MARN_REPO", str(PROJECT_ROOT))).resolve()
    try:
        settings = experiment_overrides(repo, dataset, models, overrides)
    except ConfigError as err:
        logger.error("error: %s", err)
        return Failed(message=f"error: {err}")
    name = EXPERIMENT_PREFIX + str(flow_run.get_id() or "local")[:8]
    code = dvc_experiment(settings, target, str(repo), name)
    if code != 0:
        logger.error("error: dvc exp run failed with exit code %d; its output is above", code)
        return Failed(message=f"error: dvc exp run failed with exit code {code}")
    metrics_text = experiment_file(repo, name, load_params(settings, path=repo / "params.yaml").evaluate.out)
    metrics = json.loads(metrics_text) if metrics_text else {}
    logger.info("experiment %s: `dvc exp show` lists it, `dvc exp apply %s` brings it into %s", name, name, repo)
    publish_report("pipeline-metrics", "marn-train: evaluation",
                   {"experiment": name, "settings": settings, "metrics": metrics})
    return metrics
