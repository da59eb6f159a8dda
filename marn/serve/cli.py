"""`python -m marn.serve`: export the item representations of a trained MARN, then score requests with them.

    python -m marn.serve export [MODEL] [key=value ...] [--dir DIR]   # MODEL defaults to MARN
    python -m marn.serve score  [MODEL] [key=value ...] [--dir DIR] < requests.jsonl
    python -m marn.serve http   [MODEL] [key=value ...] [--dir DIR] [--host H] [--port P] [--workers N]

`export` reads `<train.out_dir>/<MODEL>/model.pt` and writes DIR (default `data/serving/<MODEL>/`, see
`marn.serve.scoring`). `score` reads one JSON request a line, `{"history": [asin, ...], "candidates": [asin, ...]}`
with optional `history_types` (ints), `history_times` (unix seconds) and `request_time`, and prints
`{"scores": [...]}`. `http` answers the same request as the JSON body of `POST /score` (`marn.serve.server`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from marn import ops
from marn.config import ConfigError, Paths
from marn.models.registry import check_model_name
from marn.pipeline import load_params
from marn.serve.scoring import export_item_representations, load_scorer, score_lines

DEFAULT_MODEL = "MARN"
DEFAULT_EXPORT_ROOT = "data/serving"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m marn.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("export", "score", "http"))
    parser.add_argument("args", nargs="*", help="MODEL (default MARN), then key=value overrides of params.yaml")
    parser.add_argument("--dir", type=Path, help="export folder (default data/serving/<MODEL>)")
    parser.add_argument("--host", default="127.0.0.1", help="http: address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="http: port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="http: worker processes (default 1)")
    options = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    has_model = bool(options.args) and "=" not in options.args[0]
    model_name = options.args[0] if has_model else DEFAULT_MODEL
    overrides = options.args[1:] if has_model else options.args
    try:
        config = load_params(overrides)
        check_model_name(model_name)
    except (ConfigError, ValueError) as err:
        sys.exit(f"error: {err}")
    paths = Paths.from_params(config)
    export_dir = options.dir or Path.cwd() / DEFAULT_EXPORT_ROOT / model_name
    try:
        if options.command == "export":
            with ops.use_backend(config.ops.backend):
                manifest = export_item_representations(model_name, config.data.max_len, paths, export_dir)
            print(f"{manifest['n_items']} item representations of {model_name} written to {export_dir}")
        elif options.command == "score":
            score_lines(load_scorer(model_name, paths, export_dir, config.ops.backend), sys.stdin, sys.stdout)
        else:
            from marn.serve.server import run_server  # the web stack loads only for this command

            run_server(config, model_name, export_dir, overrides, options.host, options.port, options.workers)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
