"""The evaluate stage: AUC variants against brute force and scikit-learn, and the files it writes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

import marn.evaluate
from marn.config import ConfigError, validate
from marn.data.dataset import CTRDataset
from marn.data.item_table import load_item_table
from marn.items import RESERVED_ENTRIES
from marn.evaluate import (
    evaluate_models, extra_test_negatives, per_group_auc, popularity_auc, popularity_levels_of_test_items, predict,
    ranking_metrics,
)
from marn.models.persistence import load_model, model_file
from tests.tiny_data import tiny_config, tiny_paths
from tests.training_support import train_tiny


def brute_force_user_auc(users, labels, scores) -> tuple[float, int]:
    """Eq. 11 pair by pair: mean over users holding both classes of the share of (pos, neg) pairs ranked right."""
    per_user = []
    for user in sorted(set(users)):
        pos = [s for u, y, s in zip(users, labels, scores) if u == user and y == 1]
        neg = [s for u, y, s in zip(users, labels, scores) if u == user and y == 0]
        if pos and neg:
            pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]
            per_user.append(sum(pairs) / len(pairs))
    return sum(per_user) / len(per_user), len(per_user)


samples = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60)


@settings(deadline=None, max_examples=200)
@given(samples, st.booleans())
def test_user_auc_matches_eq_11_brute_force_and_sklearn(rows, continuous):
    users, labels, scores = (np.array(column) for column in zip(*rows))
    # small integer scores make many ties; continuous ones make none
    scores = scores / 7.0 if not continuous else np.random.default_rng(len(rows)).random(len(rows))
    both = [u for u in set(users) if len(set(labels[users == u])) == 2]
    if not both:
        with pytest.raises(ValueError, match="no user has both"):
            ranking_metrics(users, labels, scores)
        return
    metrics = ranking_metrics(users, labels, scores)
    expected, n_users = brute_force_user_auc(users.tolist(), labels.tolist(), scores.tolist())
    assert metrics["user_auc"] == pytest.approx(expected, abs=1e-12)
    assert metrics["n_users"] == n_users and metrics["n_samples"] == len(rows)
    sklearn_auc = {u: roc_auc_score(labels[users == u], scores[users == u]) for u in both}
    assert metrics["user_auc"] == pytest.approx(np.mean(list(sklearn_auc.values())), abs=1e-12)
    impressions = {u: int((users == u).sum()) for u in both}
    assert metrics["gauc"] == pytest.approx(
        sum(impressions[u] * sklearn_auc[u] for u in both) / sum(impressions.values()), abs=1e-12)
    if len(set(labels)) == 2:
        assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    clipped = np.clip(scores, 1e-15, 1 - 1e-15)
    assert metrics["logloss"] == pytest.approx(log_loss(labels, clipped, labels=[0, 1]), rel=1e-9)


def test_per_group_auc_marks_one_class_groups_and_counts_samples():
    auc, n = per_group_auc(np.array([7, 7, 3, 3, 3]), np.array([1, 0, 1, 1, 0]), np.array([0.9, 0.1, 0.2, 0.8, 0.5]))
    np.testing.assert_allclose(auc, [0.5, 1.0])  # groups in sorted order: 3, then 7
    np.testing.assert_array_equal(n, [3, 2])
    single, _ = per_group_auc(np.array([1, 1]), np.array([1, 1]), np.array([0.3, 0.4]))
    assert np.isnan(single).all()


@pytest.mark.parametrize("labels, scores, message", [
    ([1, 0], [0.5, np.nan], "1 scores are NaN"),
    ([1, 2], [0.5, 0.6], r"labels must be 0 or 1, found \[2\]"),
    ([1, 0], [0.5], "differ in length"),
])
def test_bad_metric_input_is_named(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        per_group_auc(np.zeros(len(labels)), np.array(labels), np.array(scores))


def test_evaluate_models_writes_metrics_popularity_auc_and_attention(tiny_data, tmp_path):
    config = tiny_config(epochs=1)
    names = ["BaseModel+IDs", "MARN"]
    assert config.train.models == names
    models = tmp_path / "models"
    for name in names:
        train_tiny(tiny_data, models, name, epochs=1)
    paths = tiny_paths(tiny_data, models, eval_out=tmp_path / "metrics" / "eval.json", eval_plots=tmp_path / "plots")
    results = marn.evaluate.run(config, paths)
    assert json.loads(paths.eval_out.read_text()) == results
    for name in names:
        assert set(results[name]) == {"user_auc", "auc", "gauc", "logloss", "n_users", "n_samples"}
        assert results[name]["n_samples"] == 80 and results[name]["n_users"] == 40  # one pair per user
        assert 0 <= results[name]["user_auc"] <= 1
    popularity = json.loads((tmp_path / "plots/popularity_auc.json").read_text())
    assert {row["model"] for row in popularity} == set(names)
    marn_rows = [row for row in popularity if row["model"] == "MARN"]
    assert [row["level"] for row in marn_rows] == list(range(10))  # data.popularity_levels: every level shown
    assert sum(row["n_samples"] for row in marn_rows) == 80
    attention = json.loads((tmp_path / "plots/modality_attention.json").read_text())
    assert {row["model"] for row in attention} == {"MARN"}  # BaseModel+IDs has no attention over modalities
    assert {row["modality"] for row in attention} == {"ids", "image", "title", "statistics"}
    assert {row["category"] for row in attention} <= {"Cables", "Cameras", "Headphones"}
    assert all(row["attention_norm"] > 0 for row in attention)
    for png in ("popularity_auc.png", "modality_attention_MARN.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="train 'BaseModel\\+MAF'"):
        evaluate_models(config.evaluate, config.data, ["BaseModel+MAF"], paths)

    # k = 1 is the prepare stage's negative alone: user_auc exactly as eq. 11 on the test split, no extra key
    dataset = CTRDataset(tiny_data.prepared_dir, "test", max_len=6, time_gap_buckets=6)
    table = load_item_table(tiny_data.prepared_dir, tiny_data.features_dir)
    more = dataclasses.replace(config, evaluate=dataclasses.replace(config.evaluate, test_negatives=3, seed=5))
    with_more = marn.evaluate.run(more, dataclasses.replace(paths, eval_out=tmp_path / "metrics" / "eval3.json",
                                                            eval_plots=tmp_path / "plots3"))
    extra_rows = dataset.with_samples(extra_test_negatives(dataset, 3, seed=5))
    for name in names:
        model = load_model(model_file(models, name), name, table)
        first, extra = predict(model, dataset, 64), predict(model, extra_rows, 64)
        assert results[name]["user_auc"] == ranking_metrics(first["user"], first["label"], first["probability"])[
            "user_auc"]
        assert {key: value for key, value in with_more[name].items() if key != "user_auc@3neg"} == results[name]
        assert with_more[name]["user_auc@3neg"] == ranking_metrics(
            *(np.r_[first[key], extra[key]] for key in ("user", "label", "probability")))["user_auc"]


def test_test_item_levels_are_equal_frequency_over_test_items_against_a_brute_force_count():
    rng = np.random.default_rng(5)
    train_count = rng.choice([0, 0, 0, 1, 1, 2, 3, 5, 8, 40], size=60)  # heavy ties, as real item counts have
    targets = rng.choice(np.arange(RESERVED_ENTRIES, 60), size=200)  # samples repeat items
    items, levels = popularity_levels_of_test_items(targets, train_count, 10)
    assert items.tolist() == sorted(set(targets.tolist()))
    n = len(items)
    for item, level in zip(items.tolist(), levels.tolist()):
        # brute force: the items ranked below this one are less popular, or as popular with a smaller index
        below = sum((train_count[other], other) < (train_count[item], item) for other in items.tolist())
        assert level == below * 10 // n
    sizes = [sum(1 for level in levels.tolist() if level == k) for k in range(10)]
    assert set(sizes) <= {n // 10, -(-n // 10)} and sum(sizes) == n  # 10 levels, equal up to one item
    for k in range(9):
        assert train_count[items[levels == k]].max() <= train_count[items[levels == k + 1]].min()
    with pytest.raises(ValueError, match="data.popularity_levels = 10 needs at least as many distinct test items, "
                                         "the test split has 3"):
        popularity_levels_of_test_items(np.array([2, 3, 4, 3]), train_count, 10)


def test_popularity_auc_is_the_auc_of_each_levels_samples():
    rng = np.random.default_rng(6)
    train_count = rng.integers(0, 6, 40)
    targets = rng.integers(RESERVED_ENTRIES, 40, 400)
    labels, scores = rng.integers(0, 2, 400), rng.random(400)
    rows = popularity_auc({"target_item": targets, "label": labels, "probability": scores}, train_count, 10)
    items, levels = popularity_levels_of_test_items(targets, train_count, 10)
    assert [row["level"] for row in rows] == list(range(10))
    for row in rows:
        level_items = items[levels == row["level"]]
        in_level = np.isin(targets, level_items)
        assert row["n_items"] == len(level_items) and row["n_samples"] == int(in_level.sum())
        assert row["min_train_interactions"] == train_count[level_items].min()
        assert row["max_train_interactions"] == train_count[level_items].max()
        # rank arithmetic vs sklearn's pair count on the same float64 scores: equal to rounding
        assert row["auc"] == pytest.approx(roc_auc_score(labels[in_level], scores[in_level]), abs=1e-12)


def test_extra_test_negatives_are_seeded_untouched_and_follow_each_click(tiny_data):
    dataset = CTRDataset(tiny_data.prepared_dir, "test", max_len=6)
    rows = extra_test_negatives(dataset, 4, seed=0)
    positives = dataset.samples[dataset.samples["label"] == 1]
    assert len(rows) == 3 * len(positives) and (rows["label"] == 0).all()
    np.testing.assert_array_equal(rows["user"], np.repeat(positives["user"], 3))
    np.testing.assert_array_equal(rows["pos"], np.repeat(positives["pos"], 3))  # the click's own history
    for user, item in zip(rows["user"].tolist(), rows["item"].tolist()):
        touched = set(dataset.seq_items[dataset.offsets[user]:dataset.offsets[user + 1]].tolist())
        assert item not in touched and RESERVED_ENTRIES <= item < len(dataset.item_cold)
    assert np.array_equal(rows, extra_test_negatives(dataset, 4, seed=0))
    assert not np.array_equal(rows["item"], extra_test_negatives(dataset, 4, seed=1)["item"])
    assert len(extra_test_negatives(dataset, 1, seed=0)) == 0


def test_test_negatives_below_one_is_refused():
    with pytest.raises(ConfigError, match="evaluate.test_negatives must be > 0, got 0"):
        validate({"evaluate": {"test_negatives": 0}})
