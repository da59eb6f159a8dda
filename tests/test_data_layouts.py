"""Amazon 2023 files and plain interaction tables: each runs fetch -> prepare -> features -> train -> evaluate,
and each layout's bad input is counted or named with its file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from marn import train
from marn.config import PROJECT_ROOT, ColumnsConfig, DataConfig, Paths, load_config
from marn.data import fetch as fetch_stage
from marn.data import prepare as prepare_stage
from marn.data.amazon import DataFileError, SkipLog
from marn.data.fetch import fetch
from marn.data.interactions import read_interactions
from marn.data.prepare import prepare
from marn.evaluate import evaluate_models
from marn.features import build as features_build
from marn.features.images import Fc7Weights

DAY_MS = 86_400_000
START_MS = 1_600_000_000_000
TINY = [
    "data.max_len=6", "data.time_gap_buckets=6", "data.stat_granularities=[4,8]", "data.popularity_levels=4",
    "features.word_dim=8", "features.title_len=6", "features.batch_size=8", "features.image_size=32",
    "features.download_retries=0", "features.word2vec.epochs=1", "features.word2vec.min_count=1",
    "train.epochs=1", "train.batch_size=16", "train.hidden=16", "train.embed_dim=8", "train.title_filters=4",
    "train.prediction_mlp=[16]", "train.log_every=50", "train.checkpoint_every=1000", "evaluate.batch_size=64",
    "ops.backend=reference",  # the op backends have their own tests; these check the data path
]


class TinyFc7(torch.nn.Module):
    """Stands in for VGG16 up to fc7 (4096 outputs): these tests check the data path, not the image network."""

    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(3, 4096)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(self.pool(images).flatten(1)))


@pytest.fixture
def tiny_fc7(monkeypatch) -> list[int]:
    calls = []

    def fake_fc7_model(cfg, **kwargs):
        calls.append(1)
        torch.manual_seed(0)
        return TinyFc7(), Fc7Weights("random", "seed 0", None)

    monkeypatch.setattr(features_build, "fc7_model", fake_fc7_model)
    return calls


def write_gz_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def synthetic_log(n_users: int = 30, n_items: int = 16, seed: int = 0) -> list[tuple[str, str, int, float]]:
    """(user, item, time in ms, rating): each user 4-8 distinct items, liking even items more."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        length = int(rng.integers(4, 9))
        items = rng.choice(n_items, size=length, replace=False)
        for step, item in enumerate(items):
            rows.append((f"U{user:03d}", f"I{item:03d}", START_MS + (user * 10 + step) * DAY_MS,
                         float(5 - (item % 2) * 3)))
    return rows


def tiny_config(tmp_path: Path, *overrides: str):
    dirs = [f"data.raw_dir={tmp_path / 'raw'}", f"data.prepared_dir={tmp_path / 'prepared'}",
            f"features.dir={tmp_path / 'features'}", f"features.image_cache_dir={tmp_path / 'cache/images'}",
            f"features.vectors_cache_dir={tmp_path / 'cache/vectors'}", f"train.out_dir={tmp_path / 'models'}",
            f"evaluate.plots_dir={tmp_path / 'plots'}", f"evaluate.out={tmp_path / 'eval.json'}"]
    return load_config([*TINY, *dirs, *overrides], path=PROJECT_ROOT / "params.yaml")


def run_stages(cfg, tmp_path: Path, model: str = "MARN") -> tuple[dict, dict, dict]:
    """fetch -> prepare -> features -> train (one tiny epoch) -> evaluate, as the flows call them."""
    paths = Paths.from_params(cfg)
    fetch_stage.run(cfg, paths)
    prepare_report = prepare_stage.run(cfg, paths)
    features_report = features_build.run(cfg, paths)
    train.run(cfg, paths, model)
    results = evaluate_models(cfg.evaluate, cfg.data, [model], paths)
    assert 0.0 <= results[model]["auc"] <= 1.0
    return prepare_report, features_report, results


# --- Amazon Reviews 2023 --------------------------------------------------------------------------------


def review_2023(user: str, item: str, time_ms, rating=4.0, parent: str | None = None) -> str:
    return json.dumps({"rating": rating, "title": "ok", "text": "fine", "images": [], "asin": item + "-v",
                       "parent_asin": parent or item, "user_id": user, "timestamp": time_ms, "helpful_vote": 0,
                       "verified_purchase": True})


def meta_2023(item: str, **changes) -> str:
    record = {"main_category": "Toys & Games", "title": f"Wooden toy train {item}", "average_rating": 4.2,
              "rating_number": 31, "features": [], "description": [], "price": 12.5,
              "images": [{"thumb": f"t/{item}.jpg", "large": f"thumb_{item}.jpg", "hi_res": None, "variant": "PT01"},
                         {"thumb": f"t/{item}.jpg", "large": f"images/{item}.jpg", "hi_res": None,
                          "variant": "MAIN"}],
              "videos": [], "store": f"Store{int(item[1:]) % 3}", "categories": ["Toys & Games", "Trains"],
              "details": {}, "parent_asin": item, "bought_together": None}
    record.update(changes)
    return json.dumps(record)


def write_2023_mirror(root: Path, category: str) -> Path:
    """A mirror of the 2023 release holding one category, images beside the raw files' folder."""
    log = synthetic_log()
    items = sorted({item for _, item, _, _ in log})
    write_gz_lines(root / "review_categories" / f"{category}.jsonl.gz",
                   [review_2023(u, i, t, r) for u, i, t, r in log])
    write_gz_lines(root / "meta_categories" / f"meta_{category}.jsonl.gz",
                   [meta_2023(item, price=[None, "$7.99", 3][k % 3]) for k, item in enumerate(items)])
    return root


def test_amazon2023_runs_every_stage(tmp_path, tiny_fc7):
    mirror = write_2023_mirror(tmp_path / "mirror", "Toys_and_Games")
    cfg = tiny_config(tmp_path, "data.source=amazon2023", "data.category=Toys_and_Games",
                      f"data.base_url=file://{mirror}")
    raw = tmp_path / "raw"
    for item in range(16):  # the MAIN images, relative to the raw folder
        (raw / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (item * 15, 100, 200)).save(raw / "images" / f"I{item:03d}.jpg")

    report, features_report, _ = run_stages(cfg, tmp_path)

    summary = json.loads((raw / "fetch.json").read_text())
    assert summary["meta_schema"] == "amazon2023" and summary["files"]["reviews"]["sha256"]
    assert report["layout"] == "amazon2023" and report["items"] == 16 and report["skipped"] == {}
    assert report["statistics"] == ["n_reviews", "mean_rating", "average_rating", "rating_number", "price"]
    assert "missing_modalities" not in report
    items = pq.read_table(tmp_path / "prepared" / "items.parquet").to_pandas()
    assert items["image_ref"].iloc[2] == "images/I000.jpg"  # the MAIN image's large URL, not the first image's
    assert items["price"].iloc[2:5].tolist()[1:] == [7.99, 3.0] and np.isnan(items["price"].iloc[2])
    assert features_report["images_ok"] == 16 and tiny_fc7


def test_files_source_recognises_the_2023_layout(tmp_path):
    mirror = write_2023_mirror(tmp_path / "mirror", "Toys_and_Games")
    cfg = tiny_config(tmp_path, "data.source=files", f"data.reviews={mirror}/review_categories/Toys_and_Games.jsonl.gz",
                      f"data.meta={mirror}/meta_categories/meta_Toys_and_Games.jsonl.gz")
    assert fetch(cfg.data, tmp_path / "raw")["meta_schema"] == "amazon2023"
    report = prepare(cfg.data, tmp_path / "raw", tmp_path / "prepared", progress=False)
    assert report["layout"] == "amazon2023" and report["items"] == 16 and report["skipped"] == {}


def test_amazon2023_bad_lines_are_counted_with_file_and_line(tmp_path):
    raw = tmp_path / "raw"
    reviews = write_gz_lines(raw / "Toys.jsonl.gz", [
        review_2023("A", "P1", START_MS), review_2023("A", "P2", START_MS + DAY_MS),
        review_2023("A", "P3", (START_MS + 2 * DAY_MS) // 1000),  # seconds among milliseconds: converted, counted
        "{not json",  # malformed
        json.dumps({"parent_asin": "P1", "timestamp": START_MS}),  # no user_id
        review_2023("B", "P1", None),  # no timestamp
        review_2023("B", "P1", START_MS), review_2023("B", "P1", START_MS),  # a duplicate
        review_2023("B", "P9", START_MS + DAY_MS),  # an item the catalogue does not have
        review_2023("B", "P2-red", START_MS + 2 * DAY_MS, parent="P2"),  # a variant: folds into P2
        review_2023("B", "P3", START_MS + 3 * DAY_MS, rating=9),  # rating outside 0..5
        review_2023("C", "P4", START_MS), review_2023("C", "P5", START_MS + DAY_MS),
    ])
    meta = write_gz_lines(raw / "meta_Toys.jsonl.gz", [
        meta_2023("P1"), meta_2023("P2", price="from $3"), meta_2023("P3", price=-1, images=[]),
        meta_2023("P4"), meta_2023("P5"), meta_2023("P1"),  # the last: a duplicate item line
        json.dumps({"title": "no id"}),
    ])
    report = prepare(DataConfig(), raw, tmp_path / "prepared", reviews_path=reviews, meta_path=meta, progress=False)
    assert report["skipped"] == {"bad_price": 1, "duplicate_meta": 1, "duplicate_review": 1, "malformed_line": 1,
                                 "meta_missing_asin": 1, "missing_field": 1, "missing_timestamp": 1,
                                 "rating_out_of_range": 1, "timestamp_in_s_converted": 1, "unknown_item": 1}
    assert report["skipped_examples"]["malformed_line"] == ["Toys.jsonl.gz:4"]
    assert report["skipped_examples"]["timestamp_in_s_converted"] == ["Toys.jsonl.gz:3"]
    assert report["skipped_examples"]["unknown_item"] == ["Toys.jsonl.gz:9"]
    items = pq.read_table(tmp_path / "prepared" / "items.parquet").to_pandas()
    assert items["asin"].tolist()[2:] == ["P1", "P2", "P3", "P4", "P5"] and items["price"].iloc[3] == 3.0
    with np.load(tmp_path / "prepared" / "sequences.npz") as sequences:
        assert sequences["times"].tolist()[:3] == [START_MS // 1000 + k * 86_400 for k in range(3)]


def test_mostly_unreadable_2023_file_fails_naming_it(tmp_path):
    reviews = write_gz_lines(tmp_path / "Toys.jsonl.gz", ["{oops"] * 5 + [review_2023("A", "P1", START_MS)])
    meta = write_gz_lines(tmp_path / "meta_Toys.jsonl.gz", [meta_2023("P1")])
    with pytest.raises(DataFileError, match=r"Toys\.jsonl\.gz: 5 of 6 lines"):
        prepare(DataConfig(), tmp_path, tmp_path / "prepared", reviews_path=reviews, meta_path=meta, progress=False)


def test_min_interactions_keeps_the_k_core_and_says_so(tmp_path):
    rows = [f"U{u},I{i},{1_600_000_000 + u * 100 + i}" for u in range(6) for i in range(4) if (u, i) != (0, 0)]
    rows += ["U9,I0,1600000000", "U9,I7,1600000100"]  # U9 has 2 items and I7 one user: neither is in the 3-core
    reviews = write_text(tmp_path / "log.csv", "user,item,timestamp\n" + "\n".join(rows) + "\n")
    report = prepare(DataConfig(min_interactions=3), tmp_path, tmp_path / "prepared", reviews_path=reviews,
                     progress=False)
    assert report["min_interactions"] == 3 and report["skipped"]["outside_3_core"] == 2
    assert report["users"] == 6 and report["items"] == 4


# --- plain interaction tables ----------------------------------------------------------------------------


def test_movielens_style_csv_runs_every_stage(tmp_path, tiny_fc7):
    log = synthetic_log(seed=1)
    ratings = write_text(tmp_path / "ml" / "ratings.csv", "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{i},{r},{t // 1000}\n" for u, i, t, r in log))
    movies = write_text(tmp_path / "ml" / "movies.csv", "movieId,title,genres\n" + "".join(
        f'{i},"Film {i}, part {k % 3}",{"Comedy|Drama" if k % 2 else "Action"}\n'
        for k, i in enumerate(sorted({i for _, i, _, _ in log}))))
    cfg = tiny_config(tmp_path, "data.source=interactions", f"data.interactions={ratings}", f"data.items={movies}")

    report, features_report, _ = run_stages(cfg, tmp_path, model="BaseModel+IDs")

    assert report["layout"] == "table" and report["items"] == 16 and report["skipped"] == {}
    assert report["categories"] == 2 and report["statistics"] == ["n_reviews", "mean_rating"]
    assert report["missing_modalities"].keys() == {"image", "statistics"}
    assert features_report["images_ok"] == 0 and not tiny_fc7  # no image anywhere: VGG16 is never loaded


def write_recbole(folder: Path, with_types: bool) -> tuple[Path, Path]:
    log = synthetic_log(seed=2)
    kinds = ("click", "cart", "buy")
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float" + ("\tevent:token" if with_types else "")
    inter = write_text(folder / "ml-tiny.inter", header + "\n" + "".join(
        f"{u}\t{i}\t{r}\t{t // 1000}" + (f"\t{kinds[k % 3]}" if with_types else "") + "\n"
        for k, (u, i, t, r) in enumerate(log)))
    item = write_text(folder / "ml-tiny.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\t"
                      "class:token_seq\tprice:float\n" + "".join(
                          f"I{k:03d}\tThe film number {k}\t{1990 + k}\tDrama Comedy\t{k * 1.5}\n" for k in range(16)))
    return inter, item


def test_recbole_atomic_files_run_every_stage(tmp_path, tiny_fc7):
    inter, item = write_recbole(tmp_path / "recbole", with_types=True)
    cfg = tiny_config(tmp_path, "data.source=interactions", f"data.interactions={inter}", f"data.items=file://{item}")

    report, _, _ = run_stages(cfg, tmp_path)

    assert report["skipped"] == {} and report["items"] == 16
    assert report["statistics"] == ["n_reviews", "mean_rating", "price"]  # release_year is a token, no statistic
    assert report["behaviour_types"] == ["buy", "cart", "click"]
    assert report["missing_modalities"].keys() == {"image"}
    with np.load(tmp_path / "prepared" / "sequences.npz") as sequences:
        assert set(sequences["types"].tolist()) == {0, 1, 2}
    state = torch.load(tmp_path / "models" / "MARN" / "model.pt", weights_only=True)["state_dict"]
    assert state["behaviour_property.type_embedding.weight"].shape[0] == 3  # the property gate sees three types
    vocab = json.loads((tmp_path / "prepared" / "vocab.json").read_text())
    assert vocab["behaviour_types"] == ["buy", "cart", "click"] and vocab["categories"][2:] == ["Drama"]


def test_2023_benchmark_csv_runs_with_no_catalogue(tmp_path, tiny_fc7):
    log = synthetic_log(seed=3)
    header = "user_id,parent_asin,rating,timestamp,history"  # the 2023 release's benchmark CSV, times in ms
    table = write_gz_lines(tmp_path / "bench" / "Toys_and_Games.csv.gz",
                           [header] + [f"{u},{i},{r},{t}," for u, i, t, r in log])
    cfg = tiny_config(tmp_path, "data.source=interactions", f"data.interactions={table}")

    report, features_report, _ = run_stages(cfg, tmp_path)

    assert report["layout"] == "table" and report["metadata"] is None and report["skipped"] == {}
    assert report["missing_modalities"].keys() == {"image", "title", "statistics"}
    assert features_report["words"] == 2 and features_report["title_tokens"] == 0 and not tiny_fc7
    with np.load(tmp_path / "prepared" / "sequences.npz") as sequences:
        assert sequences["times"].min() == START_MS // 1000  # milliseconds read as such


def test_table_bad_rows_are_counted_with_file_and_line(tmp_path):
    rows = [
        "visitor,product,when,stars,event",
        "A,I1,1600000000,4,view", "A,I2,1600000100000,5,cart",  # milliseconds after seconds: counted
        "A,I3,1600000200", "B,,1600000000,3,view",  # too few fields; no item
        "B,I1,yesterday,3,view", "B,I2,2020-09-14T12:00:00,x,view",  # a bad time; ISO time with a bad rating
        "B,I2,2020-09-14T12:00:00,2,view", "B,I9,1600000300,1,view", "B,I3,1600000400,1,",  # dup; unknown; no type
        "B,I4,1600000500,1,view", "C,I3,1600000400,1,view", "C,I4,1600000600,2,cart",
    ]
    interactions = write_text(tmp_path / "log.csv", "\n".join(rows) + "\n")
    items = write_text(tmp_path / "items.tsv", "product\ttitle\tweight\nI1\tRed ball\t0.5\nI2\tBlue car\t-2\n"
                       "I3\tGreen kite\t1\nI3\tGreen kite\t1\nI4\tGrey bag\t2\n")
    data = DataConfig(columns=ColumnsConfig(user="visitor", item="product", timestamp="when", rating="stars",
                                            type="event"))
    report = prepare(data, tmp_path, tmp_path / "prepared", reviews_path=interactions, meta_path=items, progress=False)
    assert report["skipped"] == {"bad_rating": 1, "bad_weight": 1, "duplicate_meta": 1, "duplicate_review": 1,
                                 "malformed_line": 1, "missing_field": 1, "missing_timestamp": 1, "missing_type": 1,
                                 "timestamp_in_ms_converted": 1, "timestamp_in_iso_converted": 2,
                                 "unknown_item": 1}
    assert report["skipped_examples"]["malformed_line"] == ["log.csv:4"]
    assert report["skipped_examples"]["unknown_item"] == ["log.csv:9"]
    assert report["statistics"] == ["n_reviews", "mean_rating", "weight"] and report["behaviour_types"] == [
        "cart", "view"]


@pytest.mark.parametrize("header, message", [
    ("user,item,rating", r"log\.csv: line 1: no timestamp column among \['user', 'item', 'rating'\]; "
                         r"name it with -S data\.columns\.timestamp=COLUMN"),
    ("", r"log\.csv: line 1: no header"),
])
def test_table_without_required_columns_is_named(tmp_path, header, message):
    path = write_text(tmp_path / "log.csv", header + "\nA,I1,4\n")
    with pytest.raises(DataFileError, match=message):
        read_interactions(path, ColumnsConfig(), SkipLog())


def test_table_with_a_wrong_column_mapping_or_separator_fails(tmp_path):
    path = write_text(tmp_path / "log.csv", "u,i,t\n" + "A;I1;1600000000\n" * 3 + "A,I2,1600000100\n")
    with pytest.raises(DataFileError, match=r"data\.columns\.user is 'uid', but the header has \['u', 'i', 't'\]"):
        read_interactions(path, ColumnsConfig(user="uid"), SkipLog())
    with pytest.raises(DataFileError, match=r"log\.csv: 3 of 4 rows do not have the header's number of fields"):
        read_interactions(path, ColumnsConfig(user="u", item="i", timestamp="t"), SkipLog())


def test_parquet_interactions_with_typed_columns(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["A", "A", "B"], "item_id": ["I1", "I2", "I1"],
                             "timestamp": pa.array([1_600_000_000_000, 1_600_000_100_000, None], pa.int64()),
                             "type": [1, 2, 1]}), path)
    skips = SkipLog()
    reviews = read_interactions(path, ColumnsConfig(), skips)
    assert reviews.times.tolist() == [1_600_000_000, 1_600_000_100] and reviews.type_names == ("1", "2")
    assert reviews.types.tolist() == [0, 1] and skips.examples["missing_timestamp"] == ["log.parquet:row 3"]
