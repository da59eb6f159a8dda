"""`python -m marn.serve http`: the exported item representations and MARN's user side behind HTTP.

    POST /score   body: one request of `marn.serve score`, {"history": [...], "candidates": [...]} with the
                  optional history_types, history_times and request_time -> {"scores": [...]}, one CTR per
                  candidate, equal to `marn.serve score`'s (the same `parse_request` and `RepresentationScorer`).
    GET  /health  -> {"status": "ok", "model": ..., "model_sha256": ..., "n_items": ...}

Errors are JSON `{"error": ...}`: 400 malformed JSON or a request that does not fit the format (an empty
history included), 413 a body over `MAX_BODY_BYTES` or more than `MAX_CANDIDATES` candidates, 422 item ids
the export does not have (listed in `unknown_items`) or a request the model refuses (e.g. a behaviour type
it was not trained on, history_times without request_time).
Starlette runs the app under uvicorn; with `--workers N` each worker process loads its own scorer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from marn.config import Params, Paths
from marn.pipeline import load_params
from marn.serve.scoring import MANIFEST_FILE, RepresentationScorer, RequestError, load_scorer, parse_request

MAX_BODY_BYTES = 1 << 20  # 1 MiB: about 50,000 item ids of ten characters
MAX_CANDIDATES = 10_000
DRAIN_FACTOR = 8
# What a worker process needs to load the scorer, passed by environment (uvicorn starts workers by import).
WORKER_ENV = "MARN_SERVE_HTTP"
# uvicorn restarts a worker that has not answered within this; importing torch and loading the model on a busy
# machine takes longer than its default 5 s, which made workers restart for ever
WORKER_STARTUP_TIMEOUT_S = 120


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def create_app(scorer: RepresentationScorer, manifest: dict, max_body_bytes: int = MAX_BODY_BYTES,
               max_candidates: int = MAX_CANDIDATES) -> Starlette:
    """The app answering /score and /health with `scorer`."""

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": manifest["model_name"],
                             "model_sha256": manifest["model_sha256"], "n_items": scorer.n_items})

    async def score(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > DRAIN_FACTOR * max_body_bytes:
            return _error(413, f"request body of {declared} bytes is over the limit of {max_body_bytes}")
        body, received = bytearray(), 0
        # An oversize body is still read (up to DRAIN_FACTOR times the limit, then dropped): a client that is
        # still sending when the answer comes would see a reset connection instead of the 413.
        async for chunk in request.stream():
            received += len(chunk)
            if received <= max_body_bytes:
                body += chunk
            elif received > DRAIN_FACTOR * max_body_bytes:
                break
        if received > max_body_bytes:
            return _error(413, f"request body is over the limit of {max_body_bytes} bytes")
        try:
            fields = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return _error(400, f"the body is not JSON: {err}")
        candidates = fields.get("candidates") if isinstance(fields, dict) else None
        if isinstance(candidates, list) and len(candidates) > max_candidates:
            return _error(413, f"{len(candidates)} candidates; at most {max_candidates} per request")
        try:
            scoring_request = parse_request(scorer, fields)
        except RequestError as err:
            if err.unknown_items:
                return _error(422, str(err), unknown_items=err.unknown_items)
            return _error(400, str(err))
        try:
            scores = scorer.score(scoring_request)
        except ValueError as err:  # the model refuses the request (lengths, types or times out of range)
            return _error(422, str(err))
        return JSONResponse({"scores": scores.tolist()})

    return Starlette(routes=[Route("/health", health, methods=["GET"]), Route("/score", score, methods=["POST"])])


def _load(config: Params, model_name: str, export_dir: Path) -> Starlette:
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    scorer = load_scorer(model_name, Paths.from_params(config), export_dir, config.ops.backend)
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text())
    return create_app(scorer, manifest)


def worker_app() -> Starlette:
    """The app of one uvicorn worker process, from what `run_server` put in the environment."""
    settings = json.loads(os.environ[WORKER_ENV])
    return _load(load_params(settings["overrides"]), settings["model"], Path(settings["export_dir"]))


def run_server(config: Params, model_name: str, export_dir: Path, overrides: list[str], host: str, port: int,
               workers: int) -> None:
    """Serve until stopped (Ctrl-C or SIGTERM). The export is checked here first, so a bad one fails at once."""
    import uvicorn

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    app = _load(config, model_name, Path(export_dir))
    print(f"serving {model_name} from {export_dir} on http://{host}:{port} with {workers} worker(s)", flush=True)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return
    os.environ[WORKER_ENV] = json.dumps({"model": model_name, "export_dir": str(Path(export_dir).resolve()),
                                         "overrides": overrides})
    uvicorn.run(f"{__name__}:worker_app", factory=True, host=host, port=port, workers=workers, log_level="warning",
                timeout_worker_healthcheck=WORKER_STARTUP_TIMEOUT_S)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def call(url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, dict]:
    """(status, JSON answer) of a GET (no body) or a POST of `body`."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@contextmanager
def server_process(args: list[str], env: dict | None = None, workers: int = 1, startup_timeout_s: float = 120,
                   cwd: Path | None = None) -> Iterator[str]:
    """`python -m marn.serve http ARGS --port <free> --workers N` in a child process, yielding its base URL once
    /health answers; stopped by its PID (SIGTERM, then SIGKILL) on leaving. For tests and benchmarks."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "marn.serve", "http", *args, "--port", str(port),
                                "--workers", str(workers)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {process.stdout.read().decode()}")
            try:
                if call(f"{base}/health", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer {base}/health within {startup_timeout_s} s")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
