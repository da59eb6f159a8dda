"""Serving from exported item representations gives the full model's scores; bad requests are named."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from marn.config import Paths
from marn.data.dataset import CTRDataset
from marn.data.formats import read_items
from marn.models.persistence import ModelFileError, model_file
from marn.serve.cli import main
from marn.serve.scoring import ScoringRequest, load_scorer, request_of_sample
from tests.training_support import HIDDEN, MAX_LEN, SAME_SCORES, train_tiny, use_params_file


@pytest.fixture(scope="module")
def exported(tiny_data, tmp_path_factory):
    """A MARN trained for one epoch on the tiny data, exported with `python -m marn.serve export`."""
    out_dir = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as monkeypatch:
        config = use_params_file(tiny_data, out_dir, monkeypatch, epochs=1)
        train_tiny(tiny_data, out_dir, "MARN", epochs=1)
        main(["export", "MARN", "--dir", str(out_dir / "export")])
    return Paths.from_params(config), out_dir


def test_export_writes_every_item_with_its_id_map(tiny_data, exported):
    _, out_dir = exported
    export_dir = out_dir / "export"
    representations = np.load(export_dir / "item_representations.npy")
    assert representations.shape == (32, HIDDEN) and representations.dtype == np.float32
    ids = pq.read_table(export_dir / "item_ids.parquet").to_pydict()
    items = read_items(tiny_data.prepared_dir, ["item_idx", "asin"]).to_pydict()
    assert ids == items
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["model_name"] == "MARN" and manifest["n_items"] == 32 and manifest["max_len"] == MAX_LEN


def test_exported_representations_score_like_the_full_model(tiny_data, exported):
    paths, out_dir = exported
    scorer = load_scorer("MARN", paths, out_dir / "export", "auto")
    dataset = CTRDataset(tiny_data.prepared_dir, "test", MAX_LEN, 6)
    lengths = dataset.samples["pos"]
    # a history longer than max_len (cut to its end), a short one, and the other samples' targets as candidates
    chosen = [int(np.argmax(lengths)), int(np.argmin(lengths)), 7, 8]
    assert lengths[chosen[0]] > MAX_LEN
    candidates = [1, *dataset.samples["item"][:20].tolist()]  # 1 = the out-of-vocabulary item
    with torch.inference_mode():
        for index in chosen:
            request = request_of_sample(dataset, index, candidates)
            served = scorer.logits(request)
            torch.testing.assert_close(served, scorer.model(scorer.request_batch(request))["logit"],
                                       **SAME_SCORES)
            assert served.std() > 1e-3  # the candidates really get different scores
            # the request rebuilds the prepared batch: cut, behaviour types and time gaps included
            target = request_of_sample(dataset, index, [int(dataset.samples["item"][index])])
            torch.testing.assert_close(scorer.logits(target), scorer.model(dataset.__getitems__([index]))["logit"],
                                       **SAME_SCORES)
        empty = ScoringRequest([], candidates)
        torch.testing.assert_close(scorer.logits(empty), scorer.model(scorer.request_batch(empty))["logit"],
                                   **SAME_SCORES)


@pytest.mark.parametrize("request_fields, message", [
    ({"candidate_items": [32]}, "candidate item 32 is outside the 32 exported items"),
    ({"history_items": [3, -1]}, "history item -1 is outside the 32 exported items"),
    ({"candidate_items": []}, "a request needs at least one candidate item"),
    ({"history_types": [0]}, "1 history_types for 2 history items"),
    ({"history_times": [1, 2]}, "history_times need the request_time"),
])
def test_bad_requests_are_named(exported, request_fields, message):
    paths, out_dir = exported
    scorer = load_scorer("MARN", paths, out_dir / "export", "auto")
    request = ScoringRequest(**{"history_items": [3, 4], "candidate_items": [5], **request_fields})
    with pytest.raises(ValueError, match=message):
        scorer.score(request)
    with pytest.raises(ValueError, match=r"items \['NOPE'\] are not in the exported id map"):
        scorer.item_indices(["A00003", "NOPE"])


def test_score_command_reads_json_lines(exported, monkeypatch, capsys):
    paths, out_dir = exported
    scorer = load_scorer("MARN", paths, out_dir / "export", "auto")
    line = {"history": ["A00004", "A00006"], "candidates": ["A00010", "A00011"], "history_types": [0, 1],
            "history_times": [1_300_000_000, 1_300_500_000], "request_time": 1_301_000_000}
    monkeypatch.setenv("MARN_PARAMS", str(out_dir / "params.yaml"))
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(line) + "\n"))
    main(["score", "MARN", "--dir", str(out_dir / "export")])
    scores = json.loads(capsys.readouterr().out)["scores"]
    expected = scorer.score(ScoringRequest([4, 6], [10, 11], [0, 1], line["history_times"], line["request_time"]))
    assert scores == pytest.approx(expected.tolist(), rel=1e-6)


def test_export_of_another_model_file_is_refused(exported, tmp_path):
    paths, out_dir = exported
    saved = torch.load(model_file(out_dir, "MARN"), weights_only=True)
    first = next(iter(saved["state_dict"]))
    saved["state_dict"][first] = saved["state_dict"][first] + 1  # as if MARN had been trained again
    (tmp_path / "MARN").mkdir()
    torch.save(saved, model_file(tmp_path, "MARN"))
    with pytest.raises(ModelFileError, match="was exported from another .*model.pt; run python -m marn.serve export"):
        load_scorer("MARN", dataclasses.replace(paths, models=tmp_path), out_dir / "export", "auto")
