"""Backend selection: params, the environment variable, scoped choice, and refusals."""

import threading

import pytest
import torch

pytest.importorskip("hydra", reason="marn.config composes params.yaml with Hydra")

from marn.config import OpsConfig, load_config  # noqa: E402
from marn.ops import backend  # noqa: E402


@pytest.fixture(autouse=True)
def no_environment_override(monkeypatch):
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)


def test_default_is_auto_and_runs_the_compiled_ops_on_cpu():
    assert backend.requested_backend() == "auto"
    expected = backend.COMPILED_NAMESPACE if backend.extension.load().loaded else None
    assert backend.namespace_for(torch.device("cpu")) == expected


def test_params_select_the_backend():
    with backend.use_backend(load_config(["ops.backend=reference"]).ops.backend) as chosen:
        assert chosen == backend.requested_backend() == "reference"
        assert backend.namespace_for(torch.device("cpu")) is None


def test_environment_wins_over_params(monkeypatch):
    monkeypatch.setenv(backend.BACKEND_ENV, "reference")
    with backend.use_backend(OpsConfig(backend="cpp").backend) as chosen:
        assert chosen == backend.requested_backend() == "reference"
    monkeypatch.delenv(backend.BACKEND_ENV)
    with backend.use_backend(OpsConfig(backend="cpp").backend) as chosen:
        assert chosen == backend.requested_backend() == "cpp"


def test_a_block_restores_the_enclosing_choice_also_on_error():
    with backend.use_backend("reference"):
        with backend.use_backend("cpp"):
            assert backend.requested_backend() == "cpp"
        assert backend.requested_backend() == "reference"
        with pytest.raises(KeyError), backend.use_backend("triton"):
            raise KeyError("inside")
        assert backend.requested_backend() == "reference"
    assert backend.requested_backend() == "auto"


def test_a_choice_stays_in_its_thread():
    seen = []
    with backend.use_backend("reference"):
        thread = threading.Thread(target=lambda: seen.append(backend.requested_backend()))
        thread.start()
        thread.join()
    assert seen == ["auto"]


def test_unknown_names_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown ops backend 'gpu'; choose one of auto, cpp, cuda, triton, reference"):
        with backend.use_backend("gpu"):
            pass
    monkeypatch.setenv(backend.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match="MARN_OPS_BACKEND: unknown ops backend 'fast'"):
        backend.requested_backend()


def test_device_specific_backends_refuse_other_devices():
    with backend.use_backend("cpp"), pytest.raises(ValueError, match="'cpp' runs CPU tensors, got tensors on meta"):
        backend.namespace_for(torch.device("meta"))
    with backend.use_backend("cuda"), pytest.raises(ValueError, match="'cuda' runs CUDA tensors, got tensors on cpu"):
        backend.namespace_for(torch.device("cpu"))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with backend.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backend.namespace_for(torch.device("cpu"))


@pytest.mark.parametrize("name", ["cpp", "cuda"])
def test_op_tests_fail_when_the_compiled_backend_did_not_load(monkeypatch, name):
    """The op tests' backend switch refuses to run a compiled backend whose library is missing, so that a
    failed build fails those tests instead of comparing the reference with itself."""
    from op_samples import backend as test_backend  # noqa: PLC0415

    monkeypatch.setattr(backend.extension, "load", lambda: backend.extension.ExtensionStatus(False, False, "no compiler"))
    with pytest.raises(RuntimeError, match="compiled ops are not available: no compiler"), test_backend(name):
        pass
