"""Serving latency on CPU: one request is a user's history and --candidates candidate items, scored
- `exported`: from pre-extracted item representations (`marn.serve`; APGRU, attention and MLP per request),
- `full-model`: by the trained model's forward, which encodes every item of the request and runs the
  APGRU once per candidate (how `marn.evaluate` scores).

    python benchmarks/serve_latency.py [--model MARN] [--requests 300] [--candidates 100] [key=value ...]

Reads `<train.out_dir>/<model>/model.pt` and the prepared test split (histories, behaviour types and times
of real users; candidates drawn from the catalogue). The representations are computed in-process with
the function `python -m marn.serve export` uses. Requests alternate between the two paths, one at a time,
after a warm-up; latencies are per request, requests/s is one over the mean latency. Both paths' scores
are compared (max_abs_score_difference).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from train_throughput import RESULTS_DIR, machine_summary, markdown_table, save_results

from marn import ops
from marn.config import Params, Paths
from marn.data.dataset import load_split
from marn.data.formats import read_items
from marn.data.item_table import load_item_table
from marn.items import RESERVED_ENTRIES
from marn.models.persistence import load_model, model_file
from marn.pipeline import load_params
from marn.serve.scoring import RepresentationScorer, item_representations, request_of_sample

WARM_UP_REQUESTS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of params.yaml")
    parser.add_argument("--model", default="MARN")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = train.num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "serve_latency.json")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.candidates < 1:
        parser.error(f"--requests and --candidates must be at least 1, got {args.requests} and {args.candidates}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = load_params(args.overrides)
    paths = Paths.from_params(config)
    with ops.use_backend(config.ops.backend):
        return _measure(args, config, paths)


def _measure(args: argparse.Namespace, config: Params, paths: Paths) -> dict:
    torch.set_num_threads(args.threads or config.train.num_threads or torch.get_num_threads())
    torch.set_flush_denormal(True)  # for both paths alike
    table = load_item_table(paths.prepared, paths.features)
    model = load_model(model_file(paths.models, args.model), args.model, table)
    asins = read_items(paths.prepared, ["asin"]).column("asin").to_pylist()
    scorer = RepresentationScorer(model, item_representations(model, table.n_items), config.data.max_len,
                                  config.ops.backend, asins)

    dataset = load_split(paths.prepared, "test", config.data)
    catalogue = np.arange(RESERVED_ENTRIES, table.n_items)
    if args.candidates > len(catalogue):
        raise ValueError(f"--candidates {args.candidates} exceeds the {len(catalogue)} items of the catalogue")
    rng = np.random.default_rng(args.seed)
    samples = rng.choice(len(dataset), WARM_UP_REQUESTS + args.requests)
    requests = [request_of_sample(dataset, int(i), rng.choice(catalogue, args.candidates, replace=False).tolist())
                for i in samples]

    scoring_paths = {"exported": scorer.score,
                     "full-model": lambda request: model(scorer.request_batch(request))["prob"]}
    latencies_ms: dict[str, list[float]] = {name: [] for name in scoring_paths}
    largest_difference = 0.0
    with torch.inference_mode():
        for number, request in enumerate(requests):
            scores = {}
            for name, score in scoring_paths.items():
                started = time.perf_counter()
                scores[name] = score(request)
                elapsed = (time.perf_counter() - started) * 1e3
                if number >= WARM_UP_REQUESTS:
                    latencies_ms[name].append(elapsed)
            largest_difference = max(largest_difference, float((scores["exported"] - scores["full-model"]).abs().max()))

    rows = []
    for name, values in latencies_ms.items():
        rows.append({"path": name, "p50_ms": float(np.percentile(values, 50)),
                     "p99_ms": float(np.percentile(values, 99)), "requests_per_s": 1e3 / statistics.fmean(values)})
    full = next(r for r in rows if r["path"] == "full-model")
    for row in rows:
        row["speedup_p50"] = full["p50_ms"] / row["p50_ms"]
        row["speedup_requests_per_s"] = row["requests_per_s"] / full["requests_per_s"]
    settings = {"model": args.model, "requests": args.requests, "candidates": args.candidates,
                "max_len": config.data.max_len, "hidden": int(scorer.representations.shape[1]),
                "items": table.n_items, "max_abs_score_difference": largest_difference}
    payload = {"settings": settings, "machine": machine_summary(torch.device("cpu")), "rows": rows}
    save_results(args.out, payload)
    print(f"{args.model} serving on CPU: {args.requests} requests of {args.candidates} candidates, "
          f"{payload['machine']['threads']} threads; largest score difference {largest_difference:.2e}")
    print(markdown_table(rows, ["path", "p50_ms", "p99_ms", "requests_per_s", "speedup_p50", "speedup_requests_per_s"]))
    print(f"written to {args.out}")
    return payload


if __name__ == "__main__":
    main()
