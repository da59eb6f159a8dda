"""The A/B simulation: the statistics on arrays (many seeds, cheap), the stage on tiny synthetic and
real-format data with saved models, and the config errors."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import marn.abtest.stage
from marn import ops
from marn.abtest.experiment import build_experiment
from marn.abtest.scoring import score_candidates
from marn.abtest.simulation import (
    Requests, arm_users, assign_arms, compare_arms, examination_probabilities, metric_samples, rank_slates,
    simulate_responses,
)
from marn.abtest.stage import assign_users
from marn.abtest.statistics import RatioSample, compare, log_ratio_variance, users_needed_per_arm
from marn.config import ConfigError, DataConfig, Params, Paths, SyntheticConfig, validate
from marn.data.dataset import CTRDataset
from marn.data.fetch import fetch
from marn.data.formats import count_items
from marn.data.item_table import load_item_table
from marn.data.prepare import prepare
from marn.models.persistence import load_model, model_file, save_model
from marn.models.registry import build_model, model_folder
from marn.pipeline import registry_problems
from tests.tiny_data import tiny_architecture, write_tiny_dataset

MAX_LEN, GAP_BUCKETS = 6, 6
SEEDS = 200  # experiments per frequency test: a 5% rate is then measured to about +-1.5%
WEAK_RANKER_NOISE = 1.0


def abtest_config(**abtest) -> Params:
    """Checked params as the stage gets them (names checked against the registry too, as entry points do)."""
    # the reference ops: these tests are about the A/B glue, not the compiled kernels (tested in tests/ops)
    config = validate({"data": {"max_len": MAX_LEN, "time_gap_buckets": GAP_BUCKETS},
                       "ops": {"backend": "reference"}, "abtest": {"batch_size": 256, **abtest}})
    problems = registry_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))
    return config


@dataclass(frozen=True)
class StageData:
    raw_dir: Path
    prepared_dir: Path
    features_dir: Path
    models_dir: Path

    def paths(self, out_dir: Path) -> Paths:
        return Paths(raw=self.raw_dir, prepared=self.prepared_dir, features=self.features_dir,
                     image_cache=out_dir / "cache" / "images", vectors_cache=out_dir / "cache" / "vectors",
                     models=self.models_dir, train_params=out_dir / "train_params", eval_out=out_dir / "eval.json",
                     eval_plots=out_dir / "plots", abtest_out=out_dir / "abtest.json",
                     abtest_plot=out_dir / "abtest_lift.png", abtest_daily=out_dir / "abtest_lift.json",
                     report=out_dir / "report")

    def run(self, tmp_path: Path, **abtest) -> dict:
        return marn.abtest.stage.run(abtest_config(**abtest), self.paths(tmp_path))


def _write_features(prepared_dir: Path, features_dir: Path, rng: np.random.Generator) -> None:
    """Stand-in VGG and word features of the right shapes: the stage only needs models to load and score."""
    n_rows = count_items(prepared_dir)
    features_dir.mkdir(parents=True)
    np.save(features_dir / "image.npy", np.maximum(rng.normal(0, 1, (n_rows, 4096)), 0).astype(np.float16))
    np.save(features_dir / "image_mask.npy", np.arange(n_rows) >= 2)
    np.save(features_dir / "title_ids.npy", rng.integers(0, 10, (n_rows, 5)).astype(np.int32))
    np.save(features_dir / "word_vectors.npy", rng.normal(0, 1, (10, 12)).astype(np.float32))


def _save_untrained(name: str, prepared_dir: Path, features_dir: Path, models_dir: Path) -> None:
    table = load_item_table(prepared_dir, features_dir)
    architecture = tiny_architecture()
    torch.manual_seed(0)
    model_folder(models_dir, name).mkdir(parents=True)
    save_model(model_file(models_dir, name), name, build_model(name, table, architecture), architecture, table)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> StageData:
    root = tmp_path_factory.mktemp("abtest_synthetic")
    data = DataConfig(source="synthetic", seed=5, synthetic=SyntheticConfig(
        n_users=150, n_items=40, n_categories=3, n_brands=4, max_seq_len=12, write_images=False))
    fetch(data, root / "raw")
    # prepared with seed 42 (the negatives' draw) as the statistical checks below were tuned on
    prepare(dataclasses.replace(data, seed=42, stat_granularities=[4, 8]), root / "raw", root / "prepared",
            progress=False)
    _write_features(root / "prepared", root / "features", np.random.default_rng(0))
    _save_untrained("BaseModel+IDs", root / "prepared", root / "features", root / "models")
    return StageData(root / "raw", root / "prepared", root / "features", root / "models")


@pytest.fixture(scope="module")
def real_format(tmp_path_factory) -> StageData:
    """Data without a ground truth: the planted-signal tiny dataset of the model tests."""
    root = tmp_path_factory.mktemp("abtest_real")
    tiny = write_tiny_dataset(root)
    raw = root / "raw"
    raw.mkdir()
    (raw / "fetch.json").write_text(json.dumps({"source": "files", "files": {
        "reviews": {"name": "reviews.json.gz"}, "meta": {"name": "meta.json.gz"}}}))
    _save_untrained("BaseModel+IDs", tiny.prepared_dir, tiny.features_dir, root / "models")
    return StageData(raw, tiny.prepared_dir, tiny.features_dir, root / "models")


# ---- the pure simulation and its statistics ----

def _array_requests(rng: np.random.Generator, n_users: int, n_candidates: int, mean_requests: float = 3.0) -> Requests:
    per_user = 1 + rng.poisson(mean_requests - 1, n_users)
    user = np.repeat(np.arange(n_users), per_user)
    shape = (len(user), n_candidates)
    return Requests(user=user, day=rng.integers(0, 5, len(user)),
                    candidates=np.tile(np.arange(n_candidates), (len(user), 1)),
                    relevance=rng.beta(0.5, 3.0, shape), price=rng.lognormal(3.0, 0.8, shape))


def _expected_clicks(requests: Requests, scores: np.ndarray | None, slate_size: int,
                     position_bias: float) -> np.ndarray:
    """Expected clicks of each request under the position model; `scores` None = a random ranking."""
    examination = examination_probabilities(slate_size, position_bias)
    if scores is None:
        return examination.sum() * requests.relevance.mean(axis=1)
    best = np.argsort(-scores, axis=1)[:, :slate_size]
    return (np.take_along_axis(requests.relevance, best, axis=1) * examination).sum(axis=1)


def test_assign_arms_is_a_stable_salted_split():
    ids = [f"A{i:06d}" for i in range(6000)]
    arm = assign_arms(ids, [0.5, 0.3, 0.2], "s1")
    np.testing.assert_allclose(np.bincount(arm) / len(ids), [0.5, 0.3, 0.2], atol=0.025)
    np.testing.assert_array_equal(arm, assign_arms(ids, [0.5, 0.3, 0.2], "s1"))
    assert (arm != assign_arms(ids, [0.5, 0.3, 0.2], "s2")).mean() > 0.4
    with pytest.raises(ValueError, match="positive and sum to 1"):
        assign_arms(ids, [0.7, 0.0, 0.3], "s1")


def test_rank_slates_shows_the_best_first_and_breaks_ties_at_random():
    rng = np.random.default_rng(0)
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    np.testing.assert_array_equal(rank_slates(scores, 3, rng), [[1, 3, 2]])
    tied_first = rank_slates(np.zeros((4000, 5)), 2, rng)[:, 0]
    np.testing.assert_allclose(np.bincount(tied_first, minlength=5) / 4000, 0.2, atol=0.03)
    with pytest.raises(ValueError, match="slate_size must be in \\[1, 4\\]"):
        rank_slates(scores, 5, rng)


@pytest.mark.parametrize("click_model", ["position", "cascade"])
def test_clicks_follow_the_click_model(click_model):
    n, relevance = 40_000, 0.4
    requests = Requests(user=np.arange(n), day=np.zeros(n, dtype=np.int64),
                        candidates=np.tile(np.arange(4), (n, 1)), relevance=np.full((n, 4), relevance),
                        price=np.tile([10.0, 20.0, 30.0, 40.0], (n, 1)))
    responses = simulate_responses(requests, np.tile([4.0, 3.0, 2.0, 1.0], (n, 1)), 4, click_model, 1.0, 0.5,
                                   np.random.default_rng(1))
    if click_model == "position":
        expected = examination_probabilities(4, 1.0) * relevance
    else:
        expected = relevance * (1 - relevance) ** np.arange(4)
        assert responses.clicks.max() == 1
    np.testing.assert_allclose(responses.clicked.mean(axis=0), expected, atol=4 * math.sqrt(0.25 / n))
    assert (responses.purchased <= responses.clicked).all()
    np.testing.assert_allclose(responses.purchased.sum() / responses.clicked.sum(), 0.5, atol=0.02)
    np.testing.assert_allclose(responses.gmv, (responses.purchased * [10.0, 20.0, 30.0, 40.0]).sum(axis=1))


def test_compare_gives_the_ratio_lift_and_a_delta_interval_around_it():
    control = RatioSample(np.array([1.0, 0.0, 2.0, 1.0]), np.array([10.0, 5.0, 10.0, 5.0]))
    treatment = RatioSample(np.array([2.0, 1.0, 3.0, 0.0]), np.array([10.0, 10.0, 5.0, 5.0]))
    result = compare(control, treatment)
    assert result["lift"] == pytest.approx((6 / 30) / (4 / 30) - 1)
    assert result["ci_low"] < result["lift"] < result["ci_high"]
    assert 0 < result["p_value"] < 1 and result["users_needed_per_arm"] > 4
    same = compare(control, control)
    assert same["lift"] == 0 and same["p_value"] == pytest.approx(1.0) and same["users_needed_per_arm"] is None
    with pytest.raises(ValueError, match="at least 2 users"):
        RatioSample(np.array([1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="unknown interval method 'jackknife'"):
        compare(control, treatment, method="jackknife")


def test_bootstrap_and_delta_method_agree_on_a_large_sample():
    requests = _array_requests(np.random.default_rng(2), 3000, 8)
    user_arm = assign_arms([str(u) for u in range(3000)], [0.5, 0.5], "agree")
    scores = np.where(user_arm[requests.user][:, None] == 1, requests.relevance, 0.0)
    responses = simulate_responses(requests, scores, 3, "position", 1.0, 0.2, np.random.default_rng(3))
    results = {method: compare_arms(responses, requests.user, user_arm, ["random", "ranked"], method=method,
                                    rng=np.random.default_rng(4), bootstrap_samples=1000)["lift"]["ranked"]
               for method in ("delta", "bootstrap")}
    for metric in ("ctr", "gmv_per_impression"):
        delta, bootstrap = results["delta"][metric], results["bootstrap"][metric]
        assert delta["significant"] and bootstrap["significant"]
        width = delta["ci_high"] - delta["ci_low"]
        assert abs(delta["ci_low"] - bootstrap["ci_low"]) < 0.15 * width
        assert abs(delta["ci_high"] - bootstrap["ci_high"]) < 0.15 * width


def _weak_ranker_test(rng: np.random.Generator, n_users: int, user_arm: np.ndarray):
    """Random control against a ranker that sees the relevance through noise: a modest lift."""
    requests = _array_requests(rng, n_users, 10)
    weak_scores = requests.relevance + rng.normal(0, WEAK_RANKER_NOISE, requests.relevance.shape)
    treated = user_arm[requests.user][:, None] == 1
    responses = simulate_responses(requests, np.where(treated, weak_scores, rng.random(weak_scores.shape)), 3,
                                   "position", 1.0, 0.1, rng)
    return requests, weak_scores, responses


def test_users_needed_per_arm_gives_the_promised_power():
    """Experiments of the computed size detect the true lift about 80% of the time."""
    rng = np.random.default_rng(5)
    pilot_arm = np.arange(100_000) % 2
    pilot, weak_scores, responses = _weak_ranker_test(rng, 100_000, pilot_arm)
    true_log_lift = math.log(_expected_clicks(pilot, weak_scores, 3, 1.0).sum()
                             / _expected_clicks(pilot, None, 3, 1.0).sum())
    unit_variance = sum(len(users) * log_ratio_variance(metric_samples(responses, pilot.user, users)["ctr"])
                        for users in arm_users(pilot_arm, pilot.user, 2))
    needed = users_needed_per_arm(true_log_lift, unit_variance, 0.95, 0.8)
    assert 200 < needed < 2000
    user_arm = np.arange(2 * needed) % 2
    detected = []
    for seed in range(SEEDS):
        requests, _, responses = _weak_ranker_test(np.random.default_rng(1000 + seed), 2 * needed, user_arm)
        lift = compare_arms(responses, requests.user, user_arm, ["random", "weak"])["lift"]["weak"]
        detected.append(lift["ctr"]["significant"])
    assert 0.72 <= np.mean(detected) <= 0.88


# ---- the stage on tiny synthetic data ----

def test_oracle_beats_random_with_a_significant_lift_and_runs_are_repeatable(synthetic, tmp_path):
    arms = {"control": "random", "treatments": ["oracle", "BaseModel+IDs"]}
    report = synthetic.run(tmp_path / "a", **arms)
    oracle = report["lift"]["oracle"]
    assert oracle["ctr"]["significant"] and oracle["ctr"]["ci_low"] > 0.5
    assert oracle["gmv_per_impression"]["lift"] > 0
    assert report["relevance"]["source"] == "truth" and "simulation" in report["simulation"]
    assert set(report["arms"]) == {"random", "oracle", "BaseModel+IDs"}
    for totals in report["arms"].values():
        assert totals["impressions"] == 5 * totals["requests"] and totals["clicks"] <= totals["impressions"]
        assert totals["ctr"] == pytest.approx(totals["clicks"] / totals["impressions"])
    assert sum(t["users"] for t in report["arms"].values()) == report["users"]
    assert json.loads((tmp_path / "a/abtest.json").read_text()) == report
    daily = json.loads((tmp_path / "a/abtest_lift.json").read_text())
    assert {r["arm"] for r in daily} == {"oracle", "BaseModel+IDs"} and daily[-1]["day"] == 14
    assert (tmp_path / "a/abtest_lift.png").stat().st_size > 0

    synthetic.run(tmp_path / "b", **arms)
    for name in ("abtest.json", "abtest_lift.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_bootstrap_interval_and_cascade_model_run_in_the_stage(synthetic, tmp_path):
    report = synthetic.run(tmp_path, control="random", treatments=["oracle"], interval="bootstrap",
                           click_model="cascade")
    ctr = report["lift"]["oracle"]["ctr"]
    assert ctr["significant"] and ctr["ci_low"] < ctr["lift"] < ctr["ci_high"]
    assert report["arms"]["oracle"]["clicks"] <= report["arms"]["oracle"]["requests"]  # cascade: one click at most


def _synthetic_experiment(synthetic, tmp_path):
    config = abtest_config(control="random", treatments=["oracle"])
    return config, build_experiment(config.abtest, config.data, synthetic.paths(tmp_path))


def test_identical_arms_differ_significantly_at_the_nominal_rate(synthetic, tmp_path):
    _, experiment = _synthetic_experiment(synthetic, tmp_path)
    requests = experiment.requests
    shared_scores = requests.relevance + np.random.default_rng(6).normal(0, 0.05, requests.relevance.shape)
    ids = experiment.population.user_id.tolist()
    p_values = []
    for seed in range(SEEDS):
        user_arm = assign_arms(ids, [0.5, 0.5], f"aa-{seed}")
        responses = simulate_responses(requests, shared_scores, 5, "position", 1.0, 0.1, np.random.default_rng(seed))
        p_values.append(compare_arms(responses, requests.user, user_arm, ["a", "a-again"])["lift"]["a-again"]["ctr"][
            "p_value"])
    assert 0.02 <= np.mean(np.array(p_values) < 0.05) <= 0.09


def test_intervals_cover_the_true_lift(synthetic, tmp_path):
    """Oracle against random on the synthetic truth: the true lift is known from the expected clicks."""
    _, experiment = _synthetic_experiment(synthetic, tmp_path)
    requests = experiment.requests
    true_lift = (_expected_clicks(requests, requests.relevance, 5, 1.0).sum()
                 / _expected_clicks(requests, None, 5, 1.0).sum() - 1)
    ids = experiment.population.user_id.tolist()
    covered = []
    for seed in range(SEEDS):
        user_arm = assign_arms(ids, [0.5, 0.5], f"cover-{seed}")
        rng = np.random.default_rng(seed)
        treated = user_arm[requests.user][:, None] == 1
        scores = np.where(treated, requests.relevance, rng.random(requests.relevance.shape))
        responses = simulate_responses(requests, scores, 5, "position", 1.0, 0.1, rng)
        ctr = compare_arms(responses, requests.user, user_arm, ["random", "oracle"])["lift"]["oracle"]["ctr"]
        covered.append(ctr["ci_low"] <= true_lift <= ctr["ci_high"])
    assert 0.90 <= np.mean(covered) <= 0.99


# ---- glue: models and real-format data ----

def test_candidate_scores_are_the_models_own_predictions(synthetic):
    table = load_item_table(synthetic.prepared_dir, synthetic.features_dir)
    model = load_model(model_file(synthetic.models_dir, "BaseModel+IDs"), "BaseModel+IDs", table)
    dataset = CTRDataset(synthetic.prepared_dir, "test", MAX_LEN, GAP_BUCKETS)
    rows = np.arange(min(len(dataset), 100))
    samples = dataset.samples[rows]
    with ops.use_backend("reference"), torch.inference_mode():
        expected = model(dataset.__getitems__(rows.tolist()))["logit"].double().numpy()
        scores = score_candidates(model, dataset, samples["user"].astype(np.int64), samples["pos"].astype(np.int64),
                                  samples["item"].astype(np.int64), 32)
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)


def test_real_data_uses_a_fitted_response_model(real_format, tmp_path):
    report = real_format.run(tmp_path, control="random", treatments=["BaseModel+IDs"], max_users=0, candidates=8)
    relevance = report["relevance"]
    assert relevance["source"] == "response" and "not causal" in relevance["note"]
    coefficients = dict(zip(relevance["response_model"]["features"],
                            relevance["response_model"]["coefficients_standardized"]))
    assert coefficients["mean_rating"] > 0  # the planted signal: liked items are rated higher
    assert report["users"] == 40 and set(report["lift"]["BaseModel+IDs"]) == {"ctr", "gmv_per_impression"}


# ---- bad configs ----

@pytest.mark.parametrize("abtest, message", [
    ({"control": "YoutubeNetz"}, "abtest.control: unknown model 'YoutubeNetz'"),
    ({"treatments": ["MARN", "DUPN?"]}, "abtest.treatments\\[1\\]: unknown model 'DUPN\\?'"),
    ({"treatments": []}, "abtest.treatments is empty"),
    ({"treatments": ["BaseModel+IDs"]}, "arm 'BaseModel\\+IDs' is listed more than once"),
    ({"traffic": [1.0, 0.0]}, "abtest.traffic\\[1\\] \\(MARN\\) must be > 0"),
    ({"traffic": [0.5, 0.3, 0.2]}, "abtest.traffic has 3 shares for 2 arms"),
    ({"slate_size": 30}, "abtest.slate_size \\(30\\) is larger than the candidate pool .*abtest.candidates = 20"),
    ({"click_model": "dbn"}, "abtest.click_model must be one of position, cascade, got 'dbn'"),
    ({"confidence": 1.5}, "abtest.confidence must be in \\(0, 1\\)"),
])
def test_bad_config_fails_naming_the_value(abtest, message):
    with pytest.raises(ConfigError, match=message):
        abtest_config(**abtest)


def test_an_arm_without_users_fails(synthetic, tmp_path):
    config = abtest_config(control="random", treatments=["oracle", "BaseModel+IDs"], max_users=3)
    experiment = build_experiment(config.abtest, config.data, synthetic.paths(tmp_path))
    with pytest.raises(ValueError, match="got [01] of the 3 users; an arm needs at least 2"):
        assign_users(config.abtest, experiment)


def test_more_candidates_than_items_fails(synthetic, tmp_path):
    n_items = count_items(synthetic.prepared_dir) - 2
    with pytest.raises(ValueError, match=f"abtest.candidates \\({n_items + 1}\\) is larger than the catalogue "
                                         f"\\({n_items} items\\)"):
        synthetic.run(tmp_path, control="random", treatments=["oracle"], candidates=n_items + 1, slate_size=3)


def test_untrained_model_and_oracle_without_truth_fail(synthetic, real_format, tmp_path):
    with pytest.raises(FileNotFoundError, match="abtest arm 'MARN': .*MARN/model.pt not found; train it first"):
        synthetic.run(tmp_path, control="random", treatments=["MARN"])
    with pytest.raises(ValueError, match="'oracle' arm ranks by the true relevance, which only synthetic data has"):
        real_format.run(tmp_path, control="random", treatments=["oracle"])
