"""The evaluate stage: AUC variants against brute force and scikit-learn, and the files it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score
from test_models_data import tiny_config, tiny_data  # noqa: F401  (tiny_data is a fixture)

from marn.evaluate import evaluate_models, per_group_auc, ranking_metrics
from marn.train import train_model


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


def test_evaluate_models_writes_metrics_popularity_auc_and_attention(tiny_data, tmp_path):  # noqa: F811
    cfg = tiny_config(epochs=1)
    names = ["BaseModel+IDs", "MARN"]
    for name in names:
        train_model(cfg, name, tiny_data.prepared_dir, tiny_data.features_dir, tmp_path / "models")
    out_path = tmp_path / "metrics" / "eval.json"
    results = evaluate_models(cfg, names, tiny_data.prepared_dir, tiny_data.features_dir, tmp_path / "models",
                              out_path, plots_dir=tmp_path / "plots")
    assert json.loads(out_path.read_text()) == results
    for name in names:
        assert set(results[name]) == {"user_auc", "auc", "gauc", "logloss", "n_users", "n_samples"}
        assert results[name]["n_samples"] == 80 and results[name]["n_users"] == 40  # one pair per user
        assert 0 <= results[name]["user_auc"] <= 1
    popularity = json.loads((tmp_path / "plots/popularity_auc.json").read_text())
    assert {row["model"] for row in popularity} == set(names)
    assert sum(row["n_samples"] for row in popularity if row["model"] == "MARN") == 80
    attention = json.loads((tmp_path / "plots/modality_attention.json").read_text())
    assert {row["model"] for row in attention} == {"MARN"}  # BaseModel+IDs has no attention over modalities
    assert {row["modality"] for row in attention} == {"ids", "image", "title", "statistics"}
    assert {row["category"] for row in attention} <= {"Cables", "Cameras", "Headphones"}
    assert all(row["attention_norm"] > 0 for row in attention)
    for png in ("popularity_auc.png", "modality_attention_MARN.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileNotFoundError, match="train 'BaseModel\\+MAF'"):
        evaluate_models(cfg, ["BaseModel+MAF"], tiny_data.prepared_dir, tiny_data.features_dir, tmp_path / "models",
                        out_path, plots_dir=tmp_path / "plots")
