"""Test-wide setup: offline, analytics off, Triton in its interpreter where no GPU runs it."""

import os
import shutil

# Triton reads TRITON_INTERPRET when kernels are decorated, so it must be set before marn.ops is imported.
if shutil.which("nvidia-smi") is None or os.environ.get("MARN_TRITON_INTERPRET") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """`tests.tiny_data.write_tiny_dataset` once per test module."""
    from tests.tiny_data import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_table(tiny_data):
    """The item table of `tiny_data`."""
    from marn.data.item_table import load_item_table

    return load_item_table(tiny_data.prepared_dir, tiny_data.features_dir)
