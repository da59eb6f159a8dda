"""The `marn-train` deployment against a real Prefect server, exactly as the README runs it."""

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

from pipeline_support import make_tiny_repo, pipeline_env

pytestmark = pytest.mark.slow
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


def deployment_run(env: dict, repo: Path, *params: str) -> subprocess.CompletedProcess:
    command = PREFECT + ["deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "1500"]
    for param in params:
        command += ["--param", param]
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=1600)


def flow_run_id(output: str) -> str:
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, f"no flow run id in:\n{output}"
    return match.group(1)


def test_marn_train_deployment_on_a_local_server(tmp_path):
    repo = make_tiny_repo(tmp_path / "repo")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = pipeline_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api_url, MARN_REPO=str(repo))
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"

    with background(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port)], repo, env,
                    server_log) as server:
        wait_until(lambda: healthy(api_url) or server.poll() is not None, 120, "the Prefect server", server_log)
        assert server.poll() is None, server_log.read_text()
        with background([sys.executable, "-m", "flows.serve"], repo, env, serve_log) as serving:
            listed = lambda: "marn-train" in subprocess.run(  # noqa: E731
                PREFECT + ["deployment", "ls"], cwd=repo, env=env, capture_output=True, text=True).stdout
            wait_until(lambda: listed() or serving.poll() is not None, 120, "the served deployment", serve_log)
            assert serving.poll() is None, serve_log.read_text()

            good = deployment_run(env, repo, "dataset=synthetic", 'overrides=["train.epochs=1"]')
            assert good.returncode == 0, good.stdout + good.stderr + serve_log.read_text()[-3000:]
            assert "Completed" in good.stdout, good.stdout
            metrics = json.loads((repo / "metrics" / "eval.json").read_text())
            assert {"BaseModel+IDs", "MARN"} <= set(metrics)
            shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=repo, env=env,
                                   capture_output=True, text=True)
            assert "user_auc" in shown.stdout

            bad = deployment_run(env, repo, "dataset=no-such-dataset")
            assert bad.returncode != 0 and "Failed" in bad.stdout, bad.stdout + bad.stderr
            logs = subprocess.run(PREFECT + ["flow-run", "logs", flow_run_id(bad.stdout)], cwd=repo, env=env,
                                  capture_output=True, text=True).stdout
            assert "unknown dataset 'no-such-dataset'" in logs, logs
