"""Serve the `marn-train` deployment from this process (`python -m flows.serve`).

A served flow runs in this checkout with its virtual environment, so no work pool, image or storage is
needed; the trade-off is that runs execute only while this process is up.
"""

from flows.pipeline import pipeline_flow

DEPLOYMENT_NAME = "marn-train"

if __name__ == "__main__":
    pipeline_flow.serve(name=DEPLOYMENT_NAME, description="MARN pipeline through DVC up to evaluate")
