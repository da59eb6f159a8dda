"""The whole pipeline as a user runs it, in a fresh repository: `dvc repro`, then again with nothing to do,
then the `marn-train` deployment on a real local Prefect server, exactly as the README runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline_support import make_tiny_repo, pipeline_env, run

pytestmark = pytest.mark.slow
DVC = [sys.executable, "-m", "dvc"]
PREFECT = [sys.executable, "-m", "prefect"]
DEPLOYMENT = "marn-pipeline/marn-train"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def background(command: list[str], cwd: Path, env: dict, log: Path):
    """Start a process in its own group; stop the whole group by its PID however the test ends."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_until(predicate, timeout: float, what: str, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; log:\n{log.read_text()[-3000:]}")


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return make_tiny_repo(tmp_path_factory.mktemp("pipeline") / "repo")


@pytest.fixture(scope="module")
def prefect_env(tiny_repo, tmp_path_factory):
    """A Prefect server on a free loopback port with its own PREFECT_HOME; the environment that talks to it."""
    home = tmp_path_factory.mktemp("prefect")
    api_url = f"http://127.0.0.1:{free_port()}/api"
    env = pipeline_env(PREFECT_HOME=str(home), PREFECT_API_URL=api_url, MARN_REPO=str(tiny_repo))
    port = api_url.rsplit(":", 1)[1].split("/")[0]
    log = home / "server.log"
    with background(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", port], tiny_repo, env,
                    log) as server:
        wait_until(lambda: healthy(api_url) or server.poll() is not None, 180, "the Prefect server", log)
        assert server.poll() is None, log.read_text()
        yield env


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def test_dvc_repro_end_to_end_then_nothing_to_do(tiny_repo, prefect_env):
    first = run(DVC + ["repro"], tiny_repo, env=prefect_env, timeout=1500)
    assert {"fetch", "prepare", "features", "train@MARN", "evaluate", "abtest"} <= set(stages_run(first.stdout))

    metrics = json.loads((tiny_repo / "metrics" / "eval.json").read_text())
    assert set(metrics) == {"BaseModel+IDs", "MARN"}
    for name, values in metrics.items():
        assert 0.0 <= values["user_auc"] <= 1.0 and values["n_samples"] > 0, name
    prepared = json.loads((tiny_repo / "data" / "prepared" / "report.json").read_text())
    assert prepared["test_samples"] == metrics["MARN"]["n_samples"]
    assert json.loads((tiny_repo / "metrics" / "abtest.json").read_text())

    again = run(DVC + ["repro"], tiny_repo, env=prefect_env)
    assert stages_run(again.stdout) == [] and "Data and pipelines are up to date" in again.stdout, again.stdout
    shown = run(DVC + ["metrics", "show", "--json"], tiny_repo, env=prefect_env)
    assert "user_auc" in shown.stdout
    plots = run(DVC + ["plots", "show", "--json"], tiny_repo, env=prefect_env)
    assert "popularity_auc" in plots.stdout


def deployment_run(env: dict, repo: Path, *params: str) -> subprocess.CompletedProcess:
    command = PREFECT + ["deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "1500"]
    for param in params:
        command += ["--param", param]
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=1600)


def flow_run_logs(env: dict, repo: Path, output: str) -> str:
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, f"no flow run id in:\n{output}"
    return subprocess.run(PREFECT + ["flow-run", "logs", match.group(1)], cwd=repo, env=env, capture_output=True,
                          text=True).stdout


def test_marn_train_deployment_runs_and_fails_with_its_reason(tiny_repo, prefect_env, tmp_path):
    reproduced_before = (tiny_repo / "dvc.lock").is_file()
    serve_log = tmp_path / "serve.log"
    with background([sys.executable, "-m", "flows.serve"], tiny_repo, prefect_env, serve_log) as serving:
        served = lambda: "marn-train" in subprocess.run(  # noqa: E731
            PREFECT + ["deployment", "ls"], cwd=tiny_repo, env=prefect_env, capture_output=True, text=True).stdout
        wait_until(lambda: served() or serving.poll() is not None, 180, "the served deployment", serve_log)
        assert serving.poll() is None, serve_log.read_text()

        good = deployment_run(prefect_env, tiny_repo, "dataset=synthetic", 'overrides=["train.lambda0=0.2"]')
        assert good.returncode == 0 and "Completed" in good.stdout, \
            good.stdout + good.stderr + serve_log.read_text()[-3000:]
        ran = stages_run(flow_run_logs(prefect_env, tiny_repo, good.stdout))
        assert "train@MARN" in ran and "evaluate" in ran, ran
        if reproduced_before:  # a train.* change reruns training and evaluation, never the data stages
            assert not {"fetch", "prepare", "features"} & set(ran), ran
        assert {"BaseModel+IDs", "MARN"} <= set(json.loads((tiny_repo / "metrics" / "eval.json").read_text()))
        experiments = run(DVC + ["exp", "show", "--json"], tiny_repo, env=prefect_env)
        assert "0.2" in experiments.stdout and "user_auc" in experiments.stdout

        bad = deployment_run(prefect_env, tiny_repo, "dataset=no-such-dataset")
        assert bad.returncode != 0 and "Failed" in bad.stdout, bad.stdout + bad.stderr
        assert "unknown dataset 'no-such-dataset'" in flow_run_logs(prefect_env, tiny_repo, bad.stdout)
