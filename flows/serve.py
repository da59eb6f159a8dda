"""Serve the `marn-train` deployment from this process (`python -m flows.serve`).

A served flow runs with this checkout's virtual environment, so no work pool, image or storage is needed;
the trade-off is that runs execute only while this process is up. Each run is an isolated DVC experiment
(`dvc exp run --temp`, see flows/pipeline.py): it never writes the checkout's params.yaml or outputs, so
killing this process mid-run leaves nothing the next run trips over.
"""

from flows.pipeline import pipeline_flow

DEPLOYMENT_NAME = "marn-train"

if __name__ == "__main__":
    pipeline_flow.serve(name=DEPLOYMENT_NAME,
                        description="MARN pipeline through DVC up to evaluate, as an isolated DVC experiment")
