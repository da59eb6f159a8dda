"""Load test of `python -m marn.serve http` on 127.0.0.1 (not part of CI): requests/s and p50/p99 latency of
POST /score at each --candidates count, with each --workers count of server processes.

    python benchmarks/serve_load.py [--model MARN] [--dir EXPORT] [--candidates 100 1000] [--workers 1 2]
                                    [--clients 4] [--requests 400] [key=value ...]

Serves the export in --dir (default data/serving/<MODEL>, written by `python -m marn.serve export`) with the
model of params.yaml (the key=value overrides apply, and go to the server too). For each (workers, candidates)
case a fresh server starts, --clients threads on one persistent connection each send --warm-up requests, then
--requests requests in all, bounded by --max-seconds; a request is the history of a random test user (cut to
data.max_len, with its behaviour types and times) and candidates drawn uniformly from the catalogue.
Latency is measured by the client, from sending to the full answer; requests/s is answered requests over the
wall time of the timed phase. The client threads share the machine with the server: on a small machine they
take CPU from it, so the numbers are a lower bound of what the server alone would do. Prints a table and
writes JSON and CSV (--out, default benchmarks/results/serve_load.{json,csv}).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from train_throughput import RESULTS_DIR, machine_summary, markdown_table, save_results

from marn.config import DataConfig, Params, Paths
from marn.data.dataset import load_split
from marn.items import RESERVED_ENTRIES
from marn.pipeline import load_params
from marn.serve.cli import DEFAULT_EXPORT_ROOT
from marn.serve.scoring import ID_MAP_FILE
from marn.serve.server import server_process

COLUMNS = ["workers", "candidates", "clients", "requests", "requests_per_s", "p50_ms", "p99_ms", "errors"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of params.yaml")
    parser.add_argument("--model", default="MARN")
    parser.add_argument("--dir", type=Path, help="export folder (default data/serving/<MODEL>)")
    parser.add_argument("--candidates", nargs="+", type=int, default=[100, 1000])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--clients", type=int, default=4, help="concurrent client connections")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per case, over all clients")
    parser.add_argument("--warm-up", type=int, default=5, help="untimed requests per client first")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="bound on a case's timed phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "serve_load.json", help="JSON; the CSV beside it")
    args = parser.parse_args(argv)
    if min(args.candidates + args.workers) < 1 or args.clients < 1 or args.requests < 1:
        parser.error("--candidates, --workers, --clients and --requests must be at least 1")
    return args


def request_bodies(data: DataConfig, paths: Paths, export_dir: Path, candidates: int, count: int, seed: int
                   ) -> list[bytes]:
    """`count` request bodies: real test histories, `candidates` uniform catalogue items each."""
    asins = pq.read_table(export_dir / ID_MAP_FILE, columns=["asin"]).column("asin").to_pylist()
    dataset = load_split(paths.prepared, "test", data)
    rng = np.random.default_rng(seed)
    bodies = []
    for index in rng.integers(0, len(dataset), count):
        row = dataset.samples[index]
        start = int(dataset.offsets[row["user"]])
        end = start + int(row["pos"])
        begin = max(start, end - data.max_len)
        items = rng.integers(RESERVED_ENTRIES, len(asins), candidates)
        bodies.append(json.dumps({
            "history": [asins[i] for i in dataset.seq_items[begin:end]],
            "history_types": dataset.seq_types[begin:end].tolist(),
            "history_times": dataset.seq_times[begin:end].tolist(), "request_time": int(dataset.seq_times[end]),
            "candidates": [asins[i] for i in items]}).encode())
    return bodies


def client(base: str, bodies: list[bytes], warm_up: int, start: threading.Barrier, deadline: list[float],
           latencies: list[float], errors: list[str]) -> None:
    """Sends `bodies` on one keep-alive connection, the first `warm_up` untimed, until the deadline."""
    address = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    headers = {"Content-Type": "application/json"}

    def send(body: bytes) -> bool:
        connection.request("POST", "/score", body, headers)
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            errors.append(f"{response.status}: {answer[:200]!r}")
        return response.status == 200

    for body in bodies[:warm_up]:
        send(body)
    start.wait()
    for body in bodies[warm_up:]:
        if time.perf_counter() > deadline[0]:
            break
        began = time.perf_counter()
        if send(body):
            latencies.append(time.perf_counter() - began)
    connection.close()


def run_case(args, config: Params, export_dir: Path, workers: int, candidates: int, env: dict) -> dict:
    per_client = -(-args.requests // args.clients)
    bodies = request_bodies(config.data, Paths.from_params(config), export_dir, candidates,
                            args.clients * (args.warm_up + per_client), args.seed)
    server_args = [args.model, *args.overrides, "--dir", str(export_dir)]
    with server_process(server_args, env, workers) as base:
        start = threading.Barrier(args.clients + 1)
        deadline = [float("inf")]
        latencies: list[float] = []
        errors: list[str] = []
        chunk = args.warm_up + per_client
        threads = [threading.Thread(target=client, args=(base, bodies[k * chunk:(k + 1) * chunk], args.warm_up,
                                                          start, deadline, latencies, errors))
                   for k in range(args.clients)]
        for thread in threads:
            thread.start()
        start.wait()
        began = time.perf_counter()
        deadline[0] = began + args.max_seconds
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return {"workers": workers, "candidates": candidates, "clients": args.clients, "requests": len(latencies),
            "requests_per_s": len(latencies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * quantiles[98], "errors": len(errors), "first_error": errors[0] if errors else None}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = load_params(args.overrides)
    export_dir = (args.dir or Path.cwd() / DEFAULT_EXPORT_ROOT / args.model).resolve()
    if not (export_dir / ID_MAP_FILE).is_file():
        sys.exit(f"error: no export in {export_dir}: run python -m marn.serve export {args.model} first")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    rows = []
    for workers in args.workers:
        for candidates in args.candidates:
            row = run_case(args, config, export_dir, workers, candidates, env)
            rows.append(row)
            print(f"workers={workers} candidates={candidates}: {row['requests_per_s']:.1f} requests/s, "
                  f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, errors {row['errors']}", flush=True)
    import torch

    payload = {"settings": {"model": args.model, "clients": args.clients, "requests": args.requests,
                            "warm_up": args.warm_up, "max_seconds": args.max_seconds, "max_len": config.data.max_len,
                            "hidden": config.train.hidden, "ops_backend": config.ops.backend,
                            "server_threads": config.train.num_threads},
               "machine": machine_summary(torch.device("cpu")), "rows": rows}
    save_results(args.out, payload)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(markdown_table(rows, COLUMNS))
    print(f"written: {args.out} and {args.out.with_suffix('.csv')}")
    return payload


if __name__ == "__main__":
    main()
