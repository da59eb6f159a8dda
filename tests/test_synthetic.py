"""The synthetic Amazon-format generator: reproducible files that parse like the real ones, histories and
cold items as the story says, and a planted signal that images and titles carry and popularity cannot."""

from __future__ import annotations

import ast
import colorsys
import dataclasses
import datetime as dt
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from marn.config import SyntheticConfig
from marn.data.synthetic import ChoiceModel, generate, true_click_probability
from marn.data.synthetic import choice as choice_module
from marn.data.synthetic import generator as generator_module
from marn.data.synthetic.lexicon import (
    CATEGORIES, FILLER_WORDS, IMAGE_FAMILIES, MAX_FACTOR_LEVELS, SHARED_FAMILIES, SYNONYMS, TITLE_FAMILIES,
    brand_name,
)

DEFAULT = SyntheticConfig()
TINY = SyntheticConfig(n_users=60, n_items=40, n_categories=3, n_brands=5, image_size=16)


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory) -> Path:
    """The shipped default configuration at the shipped default seed (params.yaml: data.seed 42)."""
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, DEFAULT, seed=42)
    return out


@pytest.fixture(scope="module")
def default_data(default_dir):
    reviews = [json.loads(line) for line in gzip.open(default_dir / "reviews_Synthetic.json.gz", "rt")]
    meta = [ast.literal_eval(line) for line in gzip.open(default_dir / "meta_Synthetic.json.gz", "rt")]
    with np.load(default_dir / "truth.npz") as stored:
        truth = dict(stored)
    return reviews, meta, truth


@pytest.fixture(scope="module")
def behaviours(default_data):
    """Reviews as truth rows, sorted by (user, time): users, items, times and a last-behaviour flag."""
    reviews, _, truth = default_data
    user_row = {user: row for row, user in enumerate(truth["reviewer_id"])}
    item_row = {asin: row for row, asin in enumerate(truth["asin"])}
    users = np.array([user_row[r["reviewerID"]] for r in reviews])
    items = np.array([item_row[r["asin"]] for r in reviews])
    times = np.array([r["unixReviewTime"] for r in reviews], dtype=np.int64)
    order = np.lexsort((times, users))
    users, items, times = users[order], items[order], times[order]
    last = np.append(users[1:] != users[:-1], True)
    return users, items, times, last


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    generate(tmp_path / "a", TINY, seed=5)
    generate(tmp_path / "b", TINY, seed=5)
    generate(tmp_path / "c", TINY, seed=6)
    first = _files(tmp_path / "a")
    assert len(first) == 3 + TINY.n_items
    assert first == _files(tmp_path / "b")
    assert first["reviews_Synthetic.json.gz"] != _files(tmp_path / "c")["reviews_Synthetic.json.gz"]


def _kind(value):
    """A value's type and, for a container, the types it holds (one level deep)."""
    if isinstance(value, list):
        return "list", tuple(sorted({type(v).__name__ for v in value}))
    if isinstance(value, dict):
        return "dict", tuple(sorted({(type(k).__name__, type(v).__name__) for k, v in value.items()}))
    return type(value).__name__


def test_files_parse_like_the_real_amazon_2014_files(default_data, shared_data):
    reviews, meta, _ = default_data
    real = shared_data / "amazon2014-digital-music-head"
    with gzip.open(real / "reviews_Digital_Music_5.head6908.json.gz", "rt") as f:
        real_review = json.loads(f.readline())
    with gzip.open(real / "meta_Digital_Music.matched382.json.gz", "rt") as f:
        real_meta = [ast.literal_eval(line) for line in f]
    assert all(list(r) == list(real_review) for r in reviews)  # same keys, same order
    for key, value in real_review.items():
        assert {_kind(r[key]) for r in reviews} == {_kind(value)}, key
    real_meta_kinds = {}
    for record in real_meta:
        for key, value in record.items():
            real_meta_kinds.setdefault(key, set()).add(_kind(value))
    for record in meta:
        assert set(record) <= set(real_meta_kinds)
        for key in ("asin", "title", "price", "imUrl", "related", "salesRank", "categories", "brand"):
            assert _kind(record[key]) in real_meta_kinds[key], key
        assert all(isinstance(name, str) for path in record["categories"] for name in path)
        assert set(record["related"]) <= {"also_bought", "also_viewed", "bought_together", "buy_after_viewing"}
    for review in reviews:
        assert re.fullmatch(r"A[0-9A-Z]{13}", review["reviewerID"]) and re.fullmatch(r"B[0-9A-Z]{9}", review["asin"])
        assert review["overall"] in (1.0, 2.0, 3.0, 4.0, 5.0) and 0 <= review["helpful"][0] <= review["helpful"][1]
        day = dt.datetime.fromtimestamp(review["unixReviewTime"], tz=dt.timezone.utc)
        assert review["reviewTime"] == f"{day.month:02d} {day.day}, {day.year}"


def test_meta_covers_reviews_and_images_open_as_rgb_jpegs(default_dir, default_data):
    reviews, meta, truth = default_data
    asins = [record["asin"] for record in meta]
    assert len(set(asins)) == len(asins) == DEFAULT.n_items and sorted(asins) == asins
    assert {r["asin"] for r in reviews} <= set(asins)
    assert len({r["asin"] for r in reviews}) >= 0.9 * DEFAULT.n_items
    for record in meta:
        assert record["imUrl"] == f"images/{record['asin']}.jpg"
        with Image.open(default_dir / record["imUrl"]) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (DEFAULT.image_size, DEFAULT.image_size)
        for other in record["related"]["also_bought"]:
            assert other in set(asins) and other != record["asin"]
    assert set(truth["asin"]) == set(asins)


def test_histories_are_long_enough_and_in_time(default_data, behaviours):
    _, _, truth = default_data
    users, items, times, last = behaviours
    lengths = np.bincount(users, minlength=DEFAULT.n_users)
    assert lengths.min() >= DEFAULT.min_seq_len and lengths.max() <= DEFAULT.max_seq_len
    assert 6 < lengths.mean() < 15
    same_user = users[1:] == users[:-1]
    assert (np.diff(times)[same_user] > 0).all()  # strictly: the order of a history is never ambiguous
    assert len(set(zip(users.tolist(), items.tolist()))) == len(users)  # no item reviewed twice by a user
    start, end = truth["time_range"]
    assert start <= times.min() and times.max() < end
    assert (truth["user_time_start"] == times[np.append(True, ~same_user)]).all()
    assert (truth["user_time_end"] == times[last]).all()
    gaps = np.diff(times)[same_user]
    assert np.quantile(gaps, 0.05) < 86400 and np.quantile(gaps, 0.95) > 30 * 86400  # hours to months


def test_cold_items_are_reviewed_only_after_the_training_window(default_data, behaviours):
    _, _, truth = default_data
    users, items, times, last = behaviours
    train_end = int(truth["train_end_time"])
    cold = truth["item_cold"]
    assert cold.sum() == round(DEFAULT.cold_item_share * DEFAULT.n_items)
    assert (times[last] >= train_end).all() and (times[~last] < train_end).all()
    assert (times >= truth["item_release_time"][items]).all()
    assert not cold[items[~last]].any()
    assert 0.1 < cold[items[last]].mean() < 0.4  # cold items make a real share of the test targets
    assert cold[np.unique(items[last])].sum() >= 0.8 * cold.sum()


def test_tastes_drift_from_start_to_end(default_data, behaviours):
    """Where a user's favourite level moves, their early reviews pick the old favourite more and their late
    reviews the new one."""
    _, _, truth = default_data
    users, items, times, last = behaviours
    levels = np.concatenate([truth["item_shared_levels"], truth["item_image_levels"], truth["item_title_levels"]], 1)
    change = truth["user_taste_end"] - truth["user_taste_start"]  # (users, factors, levels)
    drifting = change.max(axis=2)[users] > 0
    rising = (levels[items] == change.argmax(axis=2)[users]) & drifting
    fading = (levels[items] == change.argmin(axis=2)[users]) & drifting
    first, final = truth["user_time_start"][users], truth["user_time_end"][users]
    progress = (times - first) / (final - first)
    early, late = progress < 0.5, (progress >= 0.5) & ~last

    def share(hits, rows):
        return hits[rows].sum() / drifting[rows].sum()

    assert share(rising, late) > share(rising, early) + 0.03
    assert share(fading, early) > share(fading, late) + 0.05


def test_titles_name_shared_and_title_factors(default_data):
    _, meta, truth = default_data
    row = {asin: k for k, asin in enumerate(truth["asin"])}
    families = [("shared", k, f) for k, f in enumerate(SHARED_FAMILIES[:DEFAULT.shared_factors])]
    families += [("title", k, f) for k, f in enumerate(TITLE_FAMILIES[:DEFAULT.title_factors])]
    word_level = {word: (kind, k, level) for kind, k, f in families
                  for level, cluster in enumerate(f.words) for word in cluster}
    complete = empty = 0
    for record in meta:
        j = row[record["asin"]]
        named = {}
        for word in record["title"].lower().split():
            if word in word_level:
                kind, k, level = word_level[word]
                named[(kind, k)] = level
        for (kind, k), level in named.items():
            assert truth[f"item_{kind}_levels"][j, k] == level
        complete += len(named) == len(families)
        empty += record["title"] == ""
    assert complete >= 0.8 * len(meta) and 0 < empty < 0.1 * len(meta)


def test_word_clusters_do_not_overlap():
    words = [w for f in SHARED_FAMILIES + TITLE_FAMILIES for cluster in f.words for w in cluster]
    words += [noun for noun, _ in CATEGORIES] + list(FILLER_WORDS)
    assert len(words) == len(set(words))
    assert all(len(cluster) == SYNONYMS for f in SHARED_FAMILIES + TITLE_FAMILIES for cluster in f.words)
    assert all(len(f.looks) >= MAX_FACTOR_LEVELS for f in SHARED_FAMILIES + IMAGE_FAMILIES)
    assert all(len(f.words) >= MAX_FACTOR_LEVELS for f in SHARED_FAMILIES + TITLE_FAMILIES)
    assert len({brand_name(k) for k in range(20000)}) == 20000


def _nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    train = np.arange(len(labels)) % 2 == 0
    mean, std = features[train].mean(0), features[train].std(0) + 1e-6
    z = (features - mean) / std
    classes = np.unique(labels[train])
    centroids = np.stack([z[train & (labels == c)].mean(0) for c in classes])
    guess = classes[np.argmin(((z[~train, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
    return float((guess == labels[~train]).mean())


def _image_features(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Plain hand-made measurements of each look: no learning beyond a nearest centroid is needed."""
    n, size = pixels.shape[:2]
    background = np.median(np.concatenate([pixels[:, 0], pixels[:, -1]], axis=1), axis=1)  # top and bottom rows
    distance = np.pad(np.abs(pixels - background[:, None, None, :]).sum(axis=3), ((0, 0), (1, 1), (1, 1)), "edge")
    silhouette = sum(distance[:, i:i + size, j:j + size] for i in range(3) for j in range(3)) / 9 > 0.2
    ys, xs = np.mgrid[0:size, 0:size]
    area = np.maximum(silhouette.sum(axis=(1, 2)), 1)
    x0, x1, y0, y1 = np.array([(*np.percentile(xs[m], [1, 99]), *np.percentile(ys[m], [1, 99])) if m.any() else
                               (0, 0, 0, 0) for m in silhouette]).T
    width, height = x1 - x0 + 1, y1 - y0 + 1
    centre_x, centre_y = ((x0 + x1) / 2)[:, None, None], ((y0 + y1) / 2)[:, None, None]
    plus_band = (np.abs(xs - centre_x) < width[:, None, None] / 6) | (np.abs(ys - centre_y) < height[:, None, None] / 6)
    shape = np.c_[area / (width * height), ((silhouette * ys).sum(axis=(1, 2)) / area - (y0 + y1) / 2) / height,
                  (silhouette & plus_band).sum(axis=(1, 2)) / area]

    body = (pixels * silhouette[..., None]).sum(axis=(1, 2)) / area[:, None]
    hue = np.array([colorsys.rgb_to_hsv(*rgb)[0] for rgb in body])
    grey = pixels.mean(axis=3)
    grey = (grey - (grey * silhouette).sum(axis=(1, 2), keepdims=True) / area[:, None, None]) * silhouette
    power = np.abs(np.fft.fft2(grey)) ** 2
    fy, fx = np.fft.fftfreq(size)[:, None] * size, np.fft.fftfreq(size)[None, :] * size
    radius, angle = np.hypot(fx, fy), np.degrees(np.arctan2(fy, fx)) % 180
    radial = np.stack([power[:, radius.astype(int) == r].sum(axis=1) for r in range(1, size // 3)], axis=1)
    angular = np.stack([power[:, (angle // 15 == a) & (radius >= 2)].sum(axis=1) for a in range(12)], axis=1)
    return {
        "colour": np.c_[np.cos(2 * np.pi * hue), np.sin(2 * np.pi * hue)], "tone": body, "scene": background,
        "size": area[:, None] / size**2, "shape": shape,
        "stripes": radial / (radial.sum(axis=1, keepdims=True) + 1e-12),
        "stripe_angle": angular / (angular.sum(axis=1, keepdims=True) + 1e-12),
    }


def test_images_show_shared_and_image_factors(default_dir, default_data):
    _, _, truth = default_data
    pixels = np.stack([np.asarray(Image.open(default_dir / f"images/{a}.jpg"), dtype=np.float64) / 255.0
                       for a in truth["asin"]])
    features = _image_features(pixels)
    shown = [(f.name, levels) for f, levels in zip(SHARED_FAMILIES, truth["item_shared_levels"].T)]
    shown += [(f.name, levels) for f, levels in zip(IMAGE_FAMILIES, truth["item_image_levels"].T)]
    assert len(shown) == DEFAULT.shared_factors + DEFAULT.image_factors
    for name, levels in shown:
        accuracy = _nearest_centroid_accuracy(features[name], levels)
        assert accuracy > 1.0 / DEFAULT.factor_levels + 0.4, (name, accuracy)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # ties share their mean rank
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    positives = labels.sum()
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * (len(labels) - positives)))


def _logistic_fit(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    design = np.c_[np.ones(len(features)), features]
    weights = np.zeros(design.shape[1])
    for _ in range(25):  # Newton steps, lightly ridged
        p = 1.0 / (1.0 + np.exp(-design @ weights))
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-3 * np.eye(len(weights))
        weights += np.linalg.solve(hessian, design.T @ (labels - p))
    return weights


def test_images_and_titles_predict_cold_clicks_popularity_cannot(default_data, behaviours):
    """For cold test targets against a random cold item the user has not seen: how often each candidate's
    factor levels occur in the user's history predicts the click; the training review count cannot."""
    _, _, truth = default_data
    users, items, times, last = behaviours
    n_shared, n_image = DEFAULT.shared_factors, DEFAULT.image_factors
    levels = np.concatenate([truth["item_shared_levels"], truth["item_image_levels"], truth["item_title_levels"]], 1)
    cold = truth["item_cold"]
    train_count = np.bincount(items[~last], minlength=len(cold))
    rng = np.random.default_rng(0)
    ends = np.nonzero(last)[0]
    starts = np.append(0, ends[:-1] + 1)
    features, labels, popularity, user_of = [], [], [], []
    for start, end in zip(starts, ends):
        if not cold[items[end]]:
            continue
        others = np.nonzero(cold & (truth["item_release_time"] <= times[end]))[0]
        others = others[others != items[end]]
        history = levels[items[start:end]]
        for candidate, label in ((items[end], 1), (rng.choice(others), 0)):
            features.append((history == levels[candidate]).mean(axis=0))
            labels.append(label)
            popularity.append(train_count[candidate])
            user_of.append(users[end])
    features, labels = np.array(features), np.array(labels)
    fit_half = np.array(user_of) % 2 == 0
    assert labels.sum() > 150

    def held_out_auc(columns: slice) -> float:
        weights = _logistic_fit(features[fit_half][:, columns], labels[fit_half])
        scores = np.c_[np.ones((~fit_half).sum()), features[~fit_half][:, columns]] @ weights
        return _auc(scores, labels[~fit_half])

    assert held_out_auc(slice(None)) > 0.68
    assert held_out_auc(slice(n_shared, n_shared + n_image)) > 0.56  # image-only factors
    assert held_out_auc(slice(n_shared + n_image, None)) > 0.56  # title-only factors
    assert held_out_auc(slice(0, n_shared)) > 0.56
    assert _auc(np.array(popularity, dtype=np.float64), labels) < 0.55


def _chi_square_per_dof(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    keep = expected >= 5
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum() / (keep.sum() - 1))


@pytest.mark.parametrize("rejection_rounds", [choice_module.MAX_REJECTION_ROUNDS, 0], ids=["rejection", "exact"])
def test_sampler_frequencies_match_true_click_probability(default_data, monkeypatch, rejection_rounds):
    """Many draws for a few (user, time, seen) cases against the probabilities, both sampling paths."""
    monkeypatch.setattr(choice_module, "MAX_REJECTION_ROUNDS", rejection_rounds)
    _, _, truth = default_data
    model = ChoiceModel(truth)
    train_end, end = int(truth["train_end_time"]), int(truth["time_range"][1])
    cases = [(0, train_end - 400 * 86400, []), (1, end - 86400, []), (2, train_end - 86400, [5, 17, 33])]
    rng = np.random.default_rng(11)
    draws = 20000
    for user, time, seen in cases:
        users = np.full(draws, user)
        seen_rows = np.tile(np.array(seen, dtype=np.int64), (draws, 1)).reshape(draws, len(seen))
        picked = model.sample(users, np.full(draws, time), seen_rows, rng)
        probs = true_click_probability(truth, user, np.arange(model.n_items), time)
        probs[seen] = 0.0
        probs /= probs.sum()
        counts = np.bincount(picked, minlength=model.n_items)
        assert counts[probs == 0].sum() == 0
        assert _chi_square_per_dof(counts, probs) < 1.6
        uniform = (probs > 0) / (probs > 0).sum()
        assert _chi_square_per_dof(counts, uniform) > 5  # the check has the power to reject a wrong model


def test_true_click_probability_is_calibrated_on_the_generated_behaviours(default_data, behaviours):
    """Every generated behaviour against the truth's probability of every unseen item at that time: binned
    by predicted probability, the chosen share matches the mean prediction."""
    _, _, truth = default_data
    users, items, times, last = behaviours
    model = ChoiceModel(truth)
    probs = true_click_probability(model, users[:, None], np.arange(model.n_items)[None, :], times[:, None])
    position = np.arange(len(users)) - np.searchsorted(users, users)
    for k in range(1, position.max() + 1):  # condition on the items seen before each behaviour
        rows = np.nonzero(position >= k)[0]
        probs[rows, items[rows - k]] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    chosen = np.zeros_like(probs, dtype=bool)
    chosen[np.arange(len(items)), items] = True
    flat, hits = probs.ravel(), chosen.ravel()
    bins = np.quantile(flat[flat > 0], np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(bins, flat, side="right") - 1, 0, 9)
    for b in range(10):
        inside = (which == b) & (flat > 0)
        predicted, observed = flat[inside].sum(), hits[inside].sum()
        assert abs(observed - predicted) < 4.0 * np.sqrt((flat[inside] * (1 - flat[inside])).sum()) + 1, b
    # and the users' tastes matter: the truth beats the same model with every user's taste zeroed
    no_taste = dict(truth, user_taste_start=0 * truth["user_taste_start"], user_taste_end=0 * truth["user_taste_end"])
    with_taste = true_click_probability(model, users, items, times)
    assert np.log(with_taste).mean() > np.log(true_click_probability(no_taste, users, items, times)).mean() + 0.5


def test_true_click_probability_takes_ids_and_sums_to_one(default_data):
    _, _, truth = default_data
    time = int(truth["time_range"][1]) - 1
    by_row = true_click_probability(truth, 3, np.arange(len(truth["asin"])), time)
    by_id = true_click_probability(truth, truth["reviewer_id"][3], truth["asin"], time)
    assert np.allclose(by_row, by_id) and np.isclose(by_row.sum(), 1.0)
    early = true_click_probability(truth, 3, np.arange(len(truth["asin"])), int(truth["train_end_time"]) - 1)
    assert (early[truth["item_cold"]] == 0).all() and np.isclose(early.sum(), 1.0)
    with pytest.raises(KeyError, match="unknown id"):
        true_click_probability(truth, "nobody", 0, time)


def test_small_catalogue_caps_histories_without_repeats(tmp_path):
    cfg = dataclasses.replace(TINY, n_items=12, max_seq_len=30, min_seq_len=3, cold_item_share=0.25,
                              write_images=False)
    summary = generate(tmp_path, cfg, seed=1)
    reviews = [json.loads(line) for line in gzip.open(tmp_path / "reviews_Synthetic.json.gz", "rt")]
    pairs = {(r["reviewerID"], r["asin"]) for r in reviews}
    assert len(pairs) == len(reviews) == summary["reviews"]
    per_user = np.unique([r["reviewerID"] for r in reviews], return_counts=True)[1]
    assert per_user.min() >= 3 and per_user.max() <= 12 - 3
    meta = [ast.literal_eval(line) for line in gzip.open(tmp_path / "meta_Synthetic.json.gz", "rt")]
    assert "imUrl" not in meta[0] and not (tmp_path / "images").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"shared_factors": 9}, "data.synthetic.shared_factors must be in"),
    ({"factor_levels": 1}, "data.synthetic.factor_levels must be at least 2"),
    ({"factor_levels": 99}, "data.synthetic.factor_levels must be in"),
    ({"cold_item_share": 1.0}, "data.synthetic.cold_item_share must be in"),
    ({"max_seq_len": 3}, r"data.synthetic.min_seq_len must be in \[2, data.synthetic.max_seq_len = 3\]"),
    ({"min_seq_len": 39, "max_seq_len": 50}, "data.synthetic.min_seq_len .* exceeds the 34 items"),
])
def test_bad_settings_name_the_key(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        generate(tmp_path, dataclasses.replace(TINY, **change), seed=0)


def test_a_failed_run_leaves_no_file_under_a_final_name(tmp_path, monkeypatch):
    def broken(day):
        raise RuntimeError("killed while writing reviews")

    monkeypatch.setattr(generator_module, "_review_day", broken)
    with pytest.raises(RuntimeError, match="killed"):
        generate(tmp_path, dataclasses.replace(TINY, write_images=False), seed=0)
    assert (tmp_path / "meta_Synthetic.json.gz").exists()  # written before the failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta_Synthetic.json.gz"]
