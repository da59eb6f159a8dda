"""Linear probes from offline features to the synthetic world's planted factors: a title factor is read from
title features, an image-only factor is not, on a small world the generator writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from marn.analysis.probes import main as probes_main
from marn.analysis.probes import factor_levels, mean_title_vectors, probe_accuracy
from marn.config import DataConfig, FeaturesConfig, SyntheticConfig
from marn.data.prepare import prepare
from marn.data.synthetic import generate
from marn.features import build_features
from tests.tiny_data import TinyData, tiny_paths

# Enough items for 5 folds of ~30; images left out: the title probe is under test, and VGG16 is slow here.
WORLD = SyntheticConfig(n_users=400, n_items=200, n_categories=3, n_brands=5, image_size=16, write_images=False)


@pytest.fixture(scope="module")
def probe_result(tmp_path_factory) -> dict:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("probes")
    raw, prepared, features = root / "raw", root / "prepared", root / "features"
    files = generate(raw, WORLD, seed=3)["files"]
    prepare(DataConfig(), raw, prepared, reviews_path=raw / files["reviews"], meta_path=raw / files["meta"],
            progress=False)
    build_features(FeaturesConfig(word_dim=128), tiny_paths(TinyData(prepared, features), root, raw=raw,
                                                            image_cache=root / "cache", vectors_cache=root / "cache"))
    out = root / "probes.json"
    probes_main(["--raw", str(raw), "--prepared", str(prepared), "--features", str(features), "--out", str(out)])
    return json.loads(out.read_text())


def test_title_factor_is_read_from_titles_and_image_factor_is_not(probe_result):
    rows = {row["factor"]: row for row in probe_result["factors"]}
    title_rows = [row for row in rows.values() if row["kind"] == "title"]
    image_rows = [row for row in rows.values() if row["kind"] == "image"]
    assert title_rows and image_rows
    # 184 items: an accuracy's sd is at most 0.5 / sqrt(184) = 0.037, so chance + 0.3 is 8 sd above chance
    for row in title_rows:
        assert row["title"] >= row["chance"] + 0.3, row
    for row in image_rows:
        assert row["title"] <= row["chance"] + 0.1, row
    assert all(row["image"] is None for row in rows.values())  # no images: the image modality is masked


def test_probe_reads_a_linear_signal_and_not_noise():
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 4, 300)
    noise = torch.from_numpy(rng.normal(size=(300, 40)))
    signal = noise.clone()
    signal[:, :4] += 3.0 * torch.nn.functional.one_hot(torch.from_numpy(levels), 4)
    chance = np.bincount(levels).max() / len(levels)
    assert probe_accuracy(signal, levels) > 0.9
    assert probe_accuracy(noise, levels) < chance + 0.1


def test_mean_title_vectors_skip_padding_and_keep_oov():
    word_vectors = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.0, 4.0]])
    title_ids = torch.tensor([[2, 3, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0]])
    expected = torch.tensor([[1.0, 2.0], [1.5, 0.5], [0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(mean_title_vectors(title_ids, word_vectors), expected)


def test_prepared_items_of_another_world_are_refused(tmp_path):
    truth = tmp_path / "truth.npz"
    generate(tmp_path, SyntheticConfig(n_users=60, n_items=40, n_categories=3, n_brands=5, image_size=16,
                                       write_images=False), seed=3)
    with pytest.raises(ValueError, match="not in .*truth.npz"):
        factor_levels(truth, np.array(["B000NOTHERE"]))
    with pytest.raises(FileNotFoundError, match="truth.npz"):
        factor_levels(tmp_path / "none" / "truth.npz", np.array([]))
