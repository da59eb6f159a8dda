"""`python -m marn.serve http` as a real server on a free loopback port: scores equal `marn.serve score`'s and
the full model's; bad requests get clear 4xx answers."""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import marn.train
from marn import ops
from marn.config import PROJECT_ROOT, Paths
from marn.data.dataset import CTRDataset
from marn.serve.cli import main
from marn.serve.scoring import load_scorer, parse_request, request_of_sample
from marn.serve.server import MAX_BODY_BYTES, MAX_CANDIDATES, call, server_process
from tests.training_support import MAX_LEN, SAME_SCORES, use_params_file

STARTUP_TIMEOUT_S = 120  # a worker imports torch and loads the model; the shared test machine can be slow


@pytest.fixture(scope="module")
def served_model(tiny_data, tmp_path_factory):
    """A MARN trained for one epoch on the tiny data and exported; params.yaml in the folder points at both."""
    out_dir = tmp_path_factory.mktemp("serve_http")
    with pytest.MonkeyPatch.context() as monkeypatch:
        # the reference ops: the op backends have their own tests
        config = use_params_file(tiny_data, out_dir, monkeypatch, ops_backend="reference", epochs=1)
        marn.train.run(config, Paths.from_params(config), "MARN")
        main(["export", "MARN", "--dir", str(out_dir / "export")])
    return config, out_dir


@contextmanager
def running_server(out_dir: Path, workers: int = 1):
    env = {**os.environ, "MARN_PARAMS": str(out_dir / "params.yaml")}
    with server_process(["MARN", "--dir", str(out_dir / "export")], env, workers, STARTUP_TIMEOUT_S,
                        PROJECT_ROOT) as base:
        yield base


@pytest.fixture(scope="module")
def server(served_model):
    with running_server(served_model[1]) as base:
        yield base


def sample_requests(tiny_data, out_dir: Path) -> list[dict]:
    """Requests as a client sends them (item ids), built from test samples: long, short and typed histories."""
    asins = pq.read_table(out_dir / "export" / "item_ids.parquet", columns=["asin"]).column("asin").to_pylist()
    dataset = CTRDataset(tiny_data.prepared_dir, "test", MAX_LEN, 6)
    lengths = dataset.samples["pos"]
    candidates = [1, *dataset.samples["item"][:20].tolist()]
    requests = []
    for index in (int(np.argmax(lengths)), int(np.argmin(lengths)), 7):
        request = request_of_sample(dataset, index, candidates)
        requests.append({"history": [asins[i] for i in request.history_items],
                         "candidates": [asins[i] for i in request.candidate_items],
                         "history_types": list(request.history_types), "history_times": list(request.history_times),
                         "request_time": request.request_time})
    requests.append({"history": requests[0]["history"][:2], "candidates": requests[0]["candidates"][:3]})
    return requests


def test_http_scores_equal_the_score_command_and_the_full_model(tiny_data, served_model, server,
                                                                 monkeypatch, capsys):
    config, out_dir = served_model
    requests = sample_requests(tiny_data, out_dir)
    served = []
    for body in requests:
        status, answer = call(f"{server}/score", json.dumps(body).encode())
        assert status == 200, answer
        served.append(answer["scores"])

    monkeypatch.setenv("MARN_PARAMS", str(out_dir / "params.yaml"))
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(body) + "\n" for body in requests)))
    main(["score", "MARN", "--dir", str(out_dir / "export")])
    printed = [json.loads(line)["scores"] for line in capsys.readouterr().out.splitlines()]
    assert served == printed  # the same parse and the same float32 math: the same numbers

    scorer = load_scorer("MARN", Paths.from_params(config), out_dir / "export", config.ops.backend)
    with ops.use_backend(config.ops.backend), torch.inference_mode():
        for body, scores in zip(requests, served):
            full = torch.sigmoid(scorer.model(scorer.request_batch(parse_request(scorer, body)))["logit"])
            torch.testing.assert_close(torch.tensor(scores), full, **SAME_SCORES)
    assert np.std(served[0]) > 1e-3  # the candidates really get different scores


@pytest.mark.parametrize("body, status, message", [
    (b'{"history": ["A00004"], "candidates": ["A00010", "NOPE"]}', 422,
     r"items \['NOPE'\] are not in the exported id map"),
    (b'{"history": [], "candidates": ["A00010"]}', 400, "history is empty"),
    (b'{"history": ["A00004"], "candidates": []}', 400, "candidates is empty"),
    (b'{"history": ["A00004"], "candidates": ["A00010"', 400, "the body is not JSON"),
    (b'["A00004"]', 400, "a request is a JSON object"),
    (b'{"history": ["A00004"], "candidates": ["A00010"], "user": 3}', 400, r"unknown request keys \['user'\]"),
    (b'{"history": ["A00004"], "candidates": ["A00010"], "history_types": [7]}', 422,
     r"behaviour type 7 is outside \[0, 2\)"),
    (b'{"history": ["A00004"], "candidates": ["A00010"], "history_times": [1]}', 422,
     "history_times need the request_time"),
    (json.dumps({"history": ["A00004"], "candidates": ["A00010"] * (MAX_CANDIDATES + 1)}).encode(), 413,
     f"at most {MAX_CANDIDATES} per request"),
    (b'{"history": ["' + b"A" * MAX_BODY_BYTES + b'"], "candidates": ["A00010"]}', 413, "over the limit"),
])
def test_bad_requests_get_clear_4xx_answers(server, body, status, message):
    answer_status, answer = call(f"{server}/score", body)
    assert answer_status == status
    assert re.search(message, answer["error"]), answer


def test_health_names_the_model(served_model, server):
    status, answer = call(f"{server}/health")
    manifest = json.loads((served_model[1] / "export" / "manifest.json").read_text())
    assert status == 200 and answer == {"status": "ok", "model": "MARN", "model_sha256": manifest["model_sha256"],
                                        "n_items": 32}


@pytest.mark.slow  # two more worker processes import torch and load the model: ~50 s on 2 busy cores
def test_two_worker_processes_answer_alike(tiny_data, served_model, server):
    body = json.dumps(sample_requests(tiny_data, served_model[1])[0]).encode()
    one = call(f"{server}/score", body)
    with running_server(served_model[1], workers=2) as base:
        answers = [call(f"{base}/score", body) for _ in range(4)]
    assert all(answer == one for answer in answers) and one[0] == 200
