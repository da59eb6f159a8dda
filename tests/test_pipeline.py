"""The whole pipeline as a user runs it, in a fresh repository: `dvc repro`, then again with nothing to do, a
second clone that must write the same dvc.lock, then the `marn-train` deployment on a real local Prefect server
as the README runs it: isolated experiments, bad parameters refused before DVC starts, a served process killed
mid-run, two runs at once."""

from __future__ import annotations

import hashlib
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
import yaml

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
    env = pipeline_env(PREFECT_HOME=str(home), PREFECT_API_URL=api_url, MARN_REPO=str(tiny_repo),
                       PREFECT_RUNNER_POLL_FREQUENCY="2")  # a served run starts within 2 s, not 10
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


def test_a_second_clone_writes_the_same_lock_and_refetching_reruns_nothing(tiny_repo, prefect_env,
                                                                          tmp_path_factory):
    if not (tiny_repo / "dvc.lock").is_file():
        run(DVC + ["repro"], tiny_repo, env=prefect_env, timeout=1500)
    clone = tmp_path_factory.mktemp("clone") / "repo"
    run(["git", "clone", "-q", str(tiny_repo), str(clone)], tiny_repo)  # the same commit; no dvc.lock, no outputs
    run(DVC + ["repro"], clone, env=prefect_env, timeout=1500)
    first, second = (yaml.safe_load((repo / "dvc.lock").read_text())["stages"] for repo in (tiny_repo, clone))
    assert sorted(first) == sorted(second)
    differing = {name: (first[name], second[name]) for name in first if first[name] != second[name]}
    assert not differing, json.dumps(differing, indent=1)[:4000]

    refetched = run(DVC + ["repro", "-f", "fetch"], clone, env=prefect_env)
    assert stages_run(refetched.stdout) == ["fetch"], refetched.stdout
    status = run(DVC + ["status"], clone, env=prefect_env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout


# --- the marn-train deployment ----------------------------------------------------------------------------


def deployment_run(env: dict, repo: Path, *params: str, watch: bool = True) -> subprocess.CompletedProcess:
    command = PREFECT + ["deployment", "run", DEPLOYMENT]
    if watch:
        command += ["--watch", "--watch-timeout", "1500"]
    for param in params:
        command += ["--param", param]
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=1600)


def flow_run_id(output: str) -> str:
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, f"no flow run id in:\n{output}"
    return match.group(1)


def flow_run_logs(env: dict, repo: Path, output: str) -> str:
    return subprocess.run(PREFECT + ["flow-run", "logs", flow_run_id(output)], cwd=repo, env=env,
                          capture_output=True, text=True).stdout


def experiment_name(logs: str) -> str:
    match = re.search(r"experiment (marn-train-[0-9a-f]+):", logs)
    assert match, logs[-3000:]
    return match.group(1)


def checkout_state(repo: Path) -> dict[str, str]:
    """What a deployment run must never change: the hashes of params, lock and metrics, and `git status`."""
    state = {name: hashlib.sha256((repo / name).read_bytes()).hexdigest() if (repo / name).is_file() else "absent"
             for name in ("params.yaml", "dvc.lock", "metrics/eval.json", "models/MARN/model.pt")}
    state["git status"] = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                                         text=True, check=True).stdout
    return state


def experiments(repo: Path, env: dict) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: its data (params, metrics)}."""
    shown = json.loads(run(DVC + ["exp", "show", "--json"], repo, env=env).stdout)
    return {exp["name"]: exp.get("data") or {} for baseline in shown for rng in baseline.get("experiments") or []
            for exp in rng["revs"] if exp.get("name")}


def lambda0_of(experiment: dict) -> float:
    return experiment["params"]["params.yaml"]["data"]["train"]["lambda0"]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Prefect starts flow runs in their own sessions, so a group kill misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


class Served:
    """`python -m flows.serve` in the background, as the README starts it; `kill` is a crash, not a shutdown."""

    def __init__(self, repo: Path, env: dict, log: Path):
        self.repo, self.env, self.log = repo, env, log
        self.context = None

    def start(self) -> None:
        self.context = background([sys.executable, "-m", "flows.serve"], self.repo, self.env, self.log)
        process = self.context.__enter__()
        served = lambda: "marn-train" in subprocess.run(  # noqa: E731
            PREFECT + ["deployment", "ls"], cwd=self.repo, env=self.env, capture_output=True, text=True).stdout
        wait_until(lambda: served() or process.poll() is not None, 180, "the served deployment", self.log)
        assert process.poll() is None, self.log.read_text()
        self.process = process

    def kill(self) -> None:
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop()

    def stop(self) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None


@pytest.fixture(scope="module")
def served(tiny_repo, prefect_env, tmp_path_factory):
    serving = Served(tiny_repo, prefect_env, tmp_path_factory.mktemp("serve") / "serve.log")
    serving.start()
    yield serving
    serving.stop()


def test_deployment_run_is_an_experiment_that_leaves_the_checkout_alone(tiny_repo, prefect_env, served):
    reproduced_before = (tiny_repo / "dvc.lock").is_file()
    before = checkout_state(tiny_repo)
    good = deployment_run(prefect_env, tiny_repo, "dataset=synthetic", 'overrides=["train.lambda0=0.2"]')
    assert good.returncode == 0 and "Completed" in good.stdout, \
        good.stdout + good.stderr + served.log.read_text()[-3000:]
    logs = flow_run_logs(prefect_env, tiny_repo, good.stdout)
    ran = stages_run(logs)
    assert "train@MARN" in ran and "evaluate" in ran, ran
    if reproduced_before:  # train.lambda0 reruns the models that read it and evaluation, never the data stages
        assert not {"fetch", "prepare", "features", "train@BaseModel+IDs"} & set(ran), ran
    assert checkout_state(tiny_repo) == before

    name = experiment_name(logs)
    listed = experiments(tiny_repo, prefect_env)[name]
    assert lambda0_of(listed) == 0.2
    assert {"BaseModel+IDs", "MARN"} <= set(listed["metrics"]["metrics/eval.json"]["data"])


@pytest.mark.parametrize("param, message", [
    ("dataset=no-such-dataset", "data.source: unknown source 'no-such-dataset'"),
    ('models=["NoSuchModel"]', "train.models[0] must be a known model"),
    ('overrides=["train.batch_size=-4"]', "train.batch_size must be at least 1, got -4"),
])
def test_bad_parameters_fail_before_dvc_starts_with_one_line(tiny_repo, prefect_env, served, param, message):
    before = checkout_state(tiny_repo)
    bad = deployment_run(prefect_env, tiny_repo, param)
    assert bad.returncode != 0 and "Failed" in bad.stdout, bad.stdout + bad.stderr
    logs = flow_run_logs(prefect_env, tiny_repo, bad.stdout)
    assert f"error: {tiny_repo / 'params.yaml'}: {message}" in logs, logs
    assert "Traceback" not in logs and "dvc exp run" not in logs, logs
    assert checkout_state(tiny_repo) == before


def test_a_run_killed_with_its_server_leaves_a_checkout_where_two_runs_at_once_complete(tiny_repo, prefect_env,
                                                                                      served):
    before = checkout_state(tiny_repo)
    started = deployment_run(prefect_env, tiny_repo, 'overrides=["train.lambda0=0.5"]', watch=False)
    assert started.returncode == 0, started.stdout + started.stderr
    wait_until(lambda: "Running stage" in flow_run_logs(prefect_env, tiny_repo, started.stdout), 300,
               "the first DVC stage of the run to be killed", served.log)
    served.kill()
    served.start()

    runs = [subprocess.Popen(PREFECT + ["deployment", "run", DEPLOYMENT, "--watch", "--watch-timeout", "1500",
                                        "--param", f'overrides=["train.lambda0={value}"]'],
                             cwd=tiny_repo, env=prefect_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for value in (0.3, 0.4)]
    outputs = [process.communicate(timeout=1600)[0] for process in runs]
    for process, output in zip(runs, outputs):
        assert process.returncode == 0 and "Completed" in output, output + served.log.read_text()[-3000:]
    logs = [flow_run_logs(prefect_env, tiny_repo, output) for output in outputs]
    listed = experiments(tiny_repo, prefect_env)
    names = [experiment_name(log) for log in logs]
    assert [lambda0_of(listed[name]) for name in names] == [0.3, 0.4]
    assert checkout_state(tiny_repo) == before
    # the killed run's temp copy is gone, so DVC lists no experiment as still running
    assert not list((tiny_repo / ".dvc" / "tmp" / "exps" / "standalone").glob("tmp*"))

    applied = run(DVC + ["exp", "apply", names[1]], tiny_repo, env=prefect_env)
    assert yaml.safe_load((tiny_repo / "params.yaml").read_text())["train"]["lambda0"] == 0.4, applied.stdout
    metrics = json.loads((tiny_repo / "metrics" / "eval.json").read_text())
    assert metrics == listed[names[1]]["metrics"]["metrics/eval.json"]["data"]
