"""The prepare stage: counts on real Amazon files, properties of the split, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marn.data.amazon import DataFileError
from marn.data.dataset import CTRDataset, build_batch, load_split, make_loader, time_gap_bucket
from marn.config import DataConfig
from marn.data.prepare import prepare

DIGITAL_MUSIC = "amazon2014-digital-music-head"


def write_lines(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def review(user: str, asin: str, t: int | None, rating: float = 4.0) -> str:
    record = {"reviewerID": user, "asin": asin, "overall": rating, "summary": "ok", "reviewText": "fine"}
    if t is not None:
        record["unixReviewTime"] = t
    return json.dumps(record)


def meta_2014(asin: str, **extra) -> str:
    record = {"asin": asin, "title": f"Red cotton shirt {asin}", "price": 9.99,
              "imUrl": f"http://example.invalid/{asin}.jpg", "salesRank": {"Clothing": 1234},
              "categories": [["Clothing", "Shirts"]], "brand": "Acme"}
    record.update(extra)
    return repr(record)


def run_prepare(tmp_path: Path, reviews: list[str], meta: list[str], **options) -> tuple[dict, Path]:
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    reviews_path = write_lines(raw / "reviews_Test.json.gz", reviews)
    meta_path = write_lines(raw / "meta_Test.json.gz", meta)
    out = tmp_path / "prepared"
    return prepare(DataConfig(**options), raw, out, reviews_path=reviews_path, meta_path=meta_path,
                   progress=False), out


def read_split(out: Path, split: str) -> np.ndarray:
    return np.load(out / f"{split}.npy")


def test_digital_music_counts_match_the_raw_file(shared_data, tmp_path):
    folder = shared_data / DIGITAL_MUSIC
    reviews_path = folder / "reviews_Digital_Music_5.head6908.json.gz"
    meta_path = folder / "meta_Digital_Music.matched382.json.gz"
    per_user = defaultdict(set)
    with gzip.open(reviews_path, "rt") as f:
        for line in f:
            record = json.loads(line)
            per_user[record["reviewerID"]].add(record["asin"])
    lengths = np.array([len(items) for items in per_user.values()])

    report = prepare(DataConfig(), folder, tmp_path / "prepared", reviews_path=reviews_path,
                     meta_path=meta_path, progress=False)

    assert report["users"] == len(per_user) == 2490
    assert report["items"] == 382
    assert report["users_with_samples"] == int((lengths >= 2).sum()) == 1329
    assert report["test_positives"] == int((lengths >= 2).sum())
    assert report["test_samples"] == 2 * report["test_positives"]
    assert report["train_positives"] == int(np.maximum(lengths - 2, 0).sum())
    assert report["train_samples"] == 2 * report["train_positives"]
    items = pq.read_table(tmp_path / "prepared" / "items.parquet").to_pandas()
    assert items["item_idx"].tolist() == list(range(384))
    assert (items["title"].iloc[2:] != "").all()
    assert items["category_idx"].iloc[2:].min() >= 2
    boundaries = np.load(tmp_path / "prepared" / "stat_boundaries.npz")
    assert boundaries["g10"].shape == (4, 9) and boundaries["g100"].shape == (4, 99)
    assert (np.diff(boundaries["g100"], axis=1) >= 0).all()


# A behaviour log: per user, a list of (item number, day) pairs; days may tie.
user_logs = st.lists(
    st.lists(st.tuples(st.integers(0, 14), st.integers(0, 400)), min_size=1, max_size=12, unique_by=lambda x: x[0]),
    min_size=1, max_size=15)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(logs=user_logs, seed=st.integers(0, 2**16))
def test_split_properties(tmp_path_factory, logs, seed):
    tmp_path = tmp_path_factory.mktemp("split")
    lines = [review(f"U{u:03d}", f"I{item:03d}", 1_300_000_000 + day * 86_400)
             for u, log in enumerate(logs) for item, day in log]
    meta = [meta_2014(f"I{i:03d}") for i in range(15)]
    report, out = run_prepare(tmp_path, lines, meta, seed=seed)

    train, test = read_split(out, "train"), read_split(out, "test")
    seq = np.load(out / "sequences.npz")
    offsets, items, times = seq["offsets"], seq["items"], seq["times"]
    vocab = json.loads((out / "vocab.json").read_text())
    lengths = {vocab["users"].index(f"U{u:03d}"): len(log) for u, log in enumerate(logs)}

    expected_train = sum(max(t - 2, 0) for t in lengths.values())
    skipped_negatives = report["skipped"].get("train_no_negative_available", 0)
    assert int(train["label"].sum()) + skipped_negatives == expected_train
    assert int(test["label"].sum()) + report["skipped"].get("test_no_negative_available", 0) == \
        sum(t >= 2 for t in lengths.values())
    for split in (train, test):
        positives, negatives = split[0::2], split[1::2]
        assert (positives["label"] == 1).all() and (negatives["label"] == 0).all()
        assert (positives["user"] == negatives["user"]).all() and (positives["pos"] == negatives["pos"]).all()
        for row in split:
            start, end = offsets[row["user"]], offsets[row["user"] + 1]
            history = items[start:start + row["pos"]]
            assert row["pos"] >= 1
            if row["label"] == 1:
                assert items[start + row["pos"]] == row["item"]
                assert row["item"] not in history
            else:
                assert row["item"] not in items[start:end]  # never touched by the user at all
    for row in test[0::2]:
        start = offsets[row["user"]]
        assert row["pos"] == lengths[row["user"]] - 1
        user_train = train[(train["user"] == row["user"]) & (train["label"] == 1)]
        assert (times[start + user_train["pos"]] <= times[start + row["pos"]]).all()


def test_bad_lines_are_counted_with_their_location(tmp_path):
    reviews = [
        review("A", "I1", 100), review("A", "I2", 200), review("A", "I3", 300),
        "{not json at all",                                 # malformed
        json.dumps({"asin": "I1", "unixReviewTime": 5}),    # missing reviewerID
        review("B", "I1", None),                            # no timestamp
        review("B", "NOPE", 50),                            # asin not in meta
        review("A", "I2", 250),                             # duplicate review (same user, item)
        review("B", "I2", 60), review("B", "I3", 70), review("C", "I4", 1), review("C", "I5", 2),
    ]
    meta = [meta_2014("I1", price=-3.0), json.dumps({"asin": "I2", "price": float("nan")}), meta_2014("I3"),
            "{'title': 'no closing brace'", meta_2014("I4"), meta_2014("I5")]
    report, out = run_prepare(tmp_path, reviews, meta)
    skipped = report["skipped"]
    assert skipped["malformed_line"] == 2
    assert skipped["missing_field"] == 1
    assert skipped["missing_timestamp"] == 1
    assert skipped["unknown_item"] == 1
    assert skipped["duplicate_review"] == 1
    assert skipped["bad_price"] == 1
    examples = report["skipped_examples"]
    assert examples["malformed_line"][0] == "reviews_Test.json.gz:4"
    assert examples["missing_timestamp"] == ["reviews_Test.json.gz:6"]
    assert examples["unknown_item"] == ["reviews_Test.json.gz:7"]
    assert examples["duplicate_review"] == ["reviews_Test.json.gz:8"]
    assert examples["bad_price"] == ["meta_Test.json.gz:1"]
    items = pq.read_table(out / "items.parquet").to_pandas().set_index("asin")
    assert np.isnan(items.loc["I1", "price"]) and np.isnan(items.loc["I2", "price"])
    assert items.loc["I3", "price"] == pytest.approx(9.99)
    assert report["users"] == 3 and report["test_positives"] == 3


def test_reviews_without_unix_time_fall_back_to_review_time(tmp_path):
    with_text_time = json.dumps({"reviewerID": "A", "asin": "I2", "overall": 5.0, "reviewTime": "09 13, 2009"})
    report, out = run_prepare(tmp_path, [review("A", "I1", 1_000_000_000), with_text_time],
                              [meta_2014("I1"), meta_2014("I2")])
    assert "missing_timestamp" not in report["skipped"]
    times = np.load(out / "sequences.npz")["times"]
    assert times.tolist() == [1_000_000_000, 1_252_800_000]


@pytest.mark.parametrize("content", [[], ["", "   "]], ids=["empty", "blank-lines"])
def test_empty_file_fails_naming_it(tmp_path, content):
    with pytest.raises(DataFileError, match=r"reviews_Test\.json\.gz.*empty"):
        run_prepare(tmp_path, content, [meta_2014("I1")])


def test_mostly_garbage_file_fails_naming_it(tmp_path):
    garbage = ["<html>", "not a record", "{'a': "] * 5 + [review("A", "I1", 1)]
    with pytest.raises(DataFileError, match=r"reviews_Test\.json\.gz: 15 of 16 lines"):
        run_prepare(tmp_path, garbage, [meta_2014("I1")])


def test_2018_schema_metadata(tmp_path):
    meta = [
        json.dumps({"asin": "I1", "title": "Blue wool scarf", "brand": "Knitco", "price": "$1,299.50",
                    "category": ["Clothing", "Accessories", "Scarves"], "imageURL": ["https://x.invalid/1.jpg"],
                    "imageURLHighRes": ["https://x.invalid/1_hi.jpg"], "rank": "12,345 in Clothing (", "main_cat": "Fashion"}),
        json.dumps({"asin": "I2", "title": "Thing", "category": [], "main_cat": "Fashion", "price": "",
                    "image": ["https://x.invalid/2.jpg"], "rank": ["77 in Fashion"]}),
    ]
    reviews = [review("A", "I1", 10), review("A", "I2", 20), review("B", "I2", 5), review("B", "I1", 30)]
    report, out = run_prepare(tmp_path, reviews, meta)
    items = pq.read_table(out / "items.parquet").to_pandas().set_index("asin")
    vocab = json.loads((out / "vocab.json").read_text())
    assert items.loc["I1", "price"] == pytest.approx(1299.5)
    assert items.loc["I1", "sales_rank"] == 12345 and items.loc["I2", "sales_rank"] == 77
    assert np.isnan(items.loc["I2", "price"])
    assert items.loc["I1", "image_ref"] == "https://x.invalid/1_hi.jpg"
    assert items.loc["I2", "image_ref"] == "https://x.invalid/2.jpg"
    assert vocab["categories"][items.loc["I1", "category_idx"]] == "Scarves"
    assert vocab["categories"][items.loc["I2", "category_idx"]] == "Fashion"
    assert vocab["brands"][items.loc["I1", "brand_idx"]] == "Knitco"
    assert items.loc["I2", "brand_idx"] == 1  # no brand: out of vocabulary
    assert list(items.loc["I1", "title_tokens"]) == ["blue", "wool", "scarf"]
    assert [reason for reason in report["skipped"] if "negative" not in reason] == []  # tiny: no negatives left


def test_cold_items_and_statistics_come_from_training_only(tmp_path):
    # I9 is only ever a test target: it must be cold, in no train sample, with no review count.
    reviews = [review("A", "I1", 1), review("A", "I2", 2), review("A", "I9", 3),
               review("B", "I1", 1), review("B", "I3", 2), review("B", "I2", 3), review("B", "I9", 4, rating=1.0),
               review("C", "I5", 1), review("C", "I6", 2)]
    report, out = run_prepare(tmp_path, reviews, [meta_2014(f"I{i}") for i in (1, 2, 3, 5, 6, 9)])
    items = pq.read_table(out / "items.parquet").to_pandas().set_index("asin")
    assert bool(items.loc["I9", "cold"]) and not items.loc[["I1", "I2", "I3"], "cold"].any()
    assert items.loc["I9", "n_reviews"] == 0 and np.isnan(items.loc["I9", "mean_rating"])
    assert items.loc["I1", "n_reviews"] == 2
    i9 = items.loc["I9", "item_idx"]
    train = read_split(out, "train")
    assert i9 not in train["item"]
    assert report["cold_test_items"] == 2 and report["cold_test_samples"] == 3  # I9 twice, and C's I6


def test_same_seed_same_files(tmp_path):
    reviews = [review(f"U{u}", f"I{(u * 7 + k) % 20}", 100 * k) for u in range(30) for k in range(6)]
    meta = [meta_2014(f"I{i}") for i in range(20)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, first = run_prepare(tmp_path / "a", reviews, meta, seed=3)
    _, second = run_prepare(tmp_path / "b", reviews, meta, seed=3)
    for name in ("train.npy", "test.npy", "sequences.npz", "stat_boundaries.npz", "vocab.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_dataset_batches_follow_the_protocol(tmp_path):
    day = 86_400
    reviews = [review("A", f"I{k}", 1_000_000 + k * 3 * day) for k in range(6)] + \
              [review("B", "I6", 5 * day), review("B", "I7", 6 * day), review("B", "I8", 7 * day)]
    _, out = run_prepare(tmp_path, reviews, [meta_2014(f"I{i}") for i in range(9)])
    dataset = CTRDataset(out, "train", max_len=2, time_gap_buckets=5)
    train = read_split(out, "train")
    batch = dataset.__getitems__(list(range(len(dataset))))
    assert batch.hist_items.shape == (len(train), 2)
    assert batch.hist_len.tolist() == np.minimum(train["pos"], 2).tolist()
    assert (batch.hist_mask.sum(1) == batch.hist_len).all()
    assert (batch.hist_items[~batch.hist_mask] == 0).all()
    # User A's sample predicting its 5th item (pos 4) sees I2 and I3 (item indices 4, 5), 6 and 3 days back.
    row = int(np.flatnonzero((train["pos"] == 4) & (train["label"] == 1))[0])
    assert batch.hist_items[row].tolist() == [4, 5]
    assert batch.hist_gap[row].tolist() == time_gap_bucket(np.array([6 * day, 3 * day]), 5).tolist() == [3, 2]
    loader = make_loader(dataset, batch_size=3, shuffle=True, seed=7)
    order = [b.target_item.tolist() for b in loader]
    assert order == [b.target_item.tolist() for b in make_loader(dataset, batch_size=3, shuffle=True, seed=7)]


def test_with_samples_scores_other_rows_on_the_same_data(tmp_path):
    reviews = [review(u, f"I{k}", 1_000_000 + k * 86_400) for u in ("A", "B") for k in range(5)]
    _, out = run_prepare(tmp_path, reviews + [review("C", f"I{k}", k) for k in range(5, 9)],
                         [meta_2014(f"I{i}") for i in range(9)])
    dataset = CTRDataset(out, "test", max_len=3)
    rows = dataset.samples[:1].copy()
    rows["item"] = 3
    candidates = dataset.with_samples(np.repeat(rows, 2))
    assert len(candidates) == 2 and len(dataset) == len(read_split(out, "test"))
    batch = candidates.__getitems__([0, 1])
    original = dataset.__getitems__([0])
    assert batch.target_item.tolist() == [3, 3]
    assert batch.hist_items.tolist() == original.hist_items.repeat(2, 1).tolist()
    with pytest.raises(ValueError, match="sample rows must have dtype"):
        dataset.with_samples(np.zeros(2, dtype=np.int64))


def test_load_split_refuses_a_split_without_samples(tmp_path):
    _, out = run_prepare(tmp_path, [review("A", "I1", 1), review("B", "I2", 2)], [meta_2014("I1"), meta_2014("I2")])
    with pytest.raises(ValueError, match="has no training samples"):
        load_split(out, "train", DataConfig())


def test_one_history_is_shared_by_every_candidate():
    day = 86_400
    batch = build_batch(np.array([7, 8, 9]), np.array([0, 1, 0], np.int8), np.array([1]), np.array([2]),
                        np.array([4, 5, 6]), behaviour_times=np.array([0, 0, 3 * day]),
                        target_time=np.array([4 * day]), time_gap_buckets=5)
    assert len(batch) == 3 and batch.user is None and batch.label is None
    assert batch.hist_items.tolist() == [[8, 9]] * 3 and batch.hist_type.tolist() == [[1, 0]] * 3
    assert batch.hist_gap.tolist() == [[3, 1]] * 3 and batch.hist_len.tolist() == [2] * 3
    empty = build_batch(np.array([], np.int64), np.array([], np.int8), np.array([0]), np.array([0]), np.array([4]))
    assert empty.hist_items.tolist() == [[0]] and empty.hist_mask.tolist() == [[False]]
