"""fetch for every data.source, with the Amazon releases served from a local mirror on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from marn.config import ConfigError, DataConfig, SyntheticConfig, validate
from marn.data.download import DownloadError
from marn.data.fetch import FETCH_RECORD, amazon_urls, detect_meta_schema, fetch, fetched_files

MUSIC = "amazon2014-digital-music-head"
REVIEWS_2014 = f"{MUSIC}/reviews_Digital_Music_5.head6908.json.gz"
META_2014 = f"{MUSIC}/meta_Digital_Music.matched382.json.gz"

REVIEWS_2018 = [
    {"overall": 5.0, "verified": True, "reviewTime": "03 30, 2016", "reviewerID": "A2TYZ821XXK2YZ",
     "asin": "3426958910", "reviewerName": "Garrett", "reviewText": "Great album.", "summary": "Five Stars",
     "unixReviewTime": 1459296000},
    {"overall": 4.0, "verified": False, "reviewTime": "12 1, 2015", "reviewerID": "A3OFSREZADFUDY",
     "asin": "5557706259", "reviewerName": "Ad", "reviewText": "Good.", "summary": "ok",
     "unixReviewTime": 1448928000, "vote": "3"},
]
META_2018 = [
    {"category": ["CDs & Vinyl", "Pop"], "title": "Memory of Trees", "brand": "Enya", "main_cat": "Digital Music",
     "rank": "581,376 in CDs & Vinyl (", "price": "$12.99", "asin": "3426958910",
     "imageURL": ["https://images-na.ssl-images-amazon.com/images/I/51b5WDjdhPL._SS40_.jpg"],
     "imageURLHighRes": ["https://images-na.ssl-images-amazon.com/images/I/51b5WDjdhPL.jpg"]},
    {"category": [], "title": "Shepherd Moons", "brand": "", "main_cat": "Digital Music", "rank": [],
     "price": "", "asin": "5557706259", "imageURL": [], "imageURLHighRes": []},
]


class _RecordingHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        self.server.paths.append(self.path)


@pytest.fixture
def mirror(tmp_path):
    """A static file server over `tmp_path/mirror`; `.paths` lists the paths requested."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_RecordingHandler, directory=str(root)))
    server.daemon_threads = True
    server.paths = []
    server.root = root
    server.base_url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def data_cfg(**data):
    """The `data` section as the stages see it: params.yaml defaults, checked, with `data` overrides."""
    return validate({"data": data}).data


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)


def test_files_source_with_file_urls(shared_data, tmp_path):
    reviews, meta = shared_data / REVIEWS_2014, shared_data / META_2014
    raw = tmp_path / "raw"
    summary = fetch(data_cfg(source="files", reviews=reviews.as_uri(), meta=meta.as_uri()), raw)

    assert summary["source"] == "files"
    assert summary["urls"] == {"reviews": reviews.as_uri(), "meta": meta.as_uri()}
    assert summary["meta_schema"] == "amazon2014"
    for role, source in (("reviews", reviews), ("meta", meta)):
        entry = summary["files"][role]
        assert entry == {"name": source.name, "size": source.stat().st_size, "sha256": sha(source)}
        assert (raw / source.name).read_bytes() == source.read_bytes()
    assert json.loads((raw / FETCH_RECORD).read_text()) == summary
    assert fetched_files(raw) == {"reviews": raw / reviews.name, "meta": raw / meta.name}


def test_files_source_mixes_http_urls_and_plain_paths(shared_data, mirror, tmp_path):
    shutil.copy(shared_data / REVIEWS_2014, mirror.root / "reviews_Digital_Music_5.json.gz")
    reviews_url = f"{mirror.base_url}/reviews_Digital_Music_5.json.gz"
    cfg = DataConfig(source="files", reviews=reviews_url, meta=str(shared_data / META_2014))
    summary = fetch(cfg, tmp_path / "raw")
    assert summary["files"]["reviews"]["name"] == "reviews_Digital_Music_5.json.gz"
    assert summary["files"]["reviews"]["sha256"] == sha(shared_data / REVIEWS_2014)
    assert summary["files"]["meta"]["name"] == Path(META_2014).name


def test_amazon2014_from_a_mirror_and_not_again(shared_data, mirror, tmp_path):
    shutil.copy(shared_data / REVIEWS_2014, mirror.root / "reviews_Digital_Music_5.json.gz")
    shutil.copy(shared_data / META_2014, mirror.root / "meta_Digital_Music.json.gz")
    cfg = data_cfg(source="amazon2014", category="Digital_Music", base_url=mirror.base_url + "/")
    raw = tmp_path / "raw"

    summary = fetch(cfg, raw)
    assert summary["category"] == "Digital_Music"
    assert summary["urls"] == {
        "reviews": f"{mirror.base_url}/reviews_Digital_Music_5.json.gz",
        "meta": f"{mirror.base_url}/meta_Digital_Music.json.gz",
    }
    assert summary["files"]["reviews"]["sha256"] == sha(shared_data / REVIEWS_2014)
    assert summary["meta_schema"] == "amazon2014"
    assert sorted(mirror.paths) == ["/meta_Digital_Music.json.gz", "/reviews_Digital_Music_5.json.gz"]

    again = fetch(cfg, raw)
    assert len(mirror.paths) == 2  # both files were complete, nothing was asked for again
    assert again["files"] == summary["files"]


def test_amazon2018_from_a_mirror(mirror, tmp_path):
    write_jsonl_gz(mirror.root / "categoryFilesSmall" / "Digital_Music_5.json.gz", REVIEWS_2018)
    write_jsonl_gz(mirror.root / "metaFiles2" / "meta_Digital_Music.json.gz", META_2018)
    raw = tmp_path / "raw"
    summary = fetch(data_cfg(source="amazon2018", category="Digital_Music", base_url=mirror.base_url), raw)
    assert summary["urls"]["reviews"] == f"{mirror.base_url}/categoryFilesSmall/Digital_Music_5.json.gz"
    assert summary["urls"]["meta"] == f"{mirror.base_url}/metaFiles2/meta_Digital_Music.json.gz"
    assert summary["meta_schema"] == "amazon2018"
    assert fetched_files(raw) == {
        "reviews": raw / "Digital_Music_5.json.gz",
        "meta": raw / "meta_Digital_Music.json.gz",
    }


def test_missing_file_on_the_mirror_names_the_url(mirror, tmp_path):
    cfg = data_cfg(source="amazon2018", category="Electronics", base_url=mirror.base_url)
    with pytest.raises(DownloadError, match=r"categoryFilesSmall/Electronics_5\.json\.gz: HTTP 404"):
        fetch(cfg, tmp_path / "raw")


def test_public_url_patterns():
    assert amazon_urls("amazon2014", "Electronics") == {
        "reviews": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Electronics_5.json.gz",
        "meta": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Electronics.json.gz",
    }
    assert amazon_urls("amazon2018", "Clothing_Shoes_and_Jewelry") == {
        "reviews": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/"
        "Clothing_Shoes_and_Jewelry_5.json.gz",
        "meta": "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/"
        "meta_Clothing_Shoes_and_Jewelry.json.gz",
    }


def test_unknown_category_is_named_with_a_suggestion(tmp_path):
    suggestion = r"'Electronic' is not a category of amazon2014\. Did you mean 'Electronics'"
    with pytest.raises(ConfigError, match=suggestion):
        fetch(data_cfg(source="amazon2014", category="Electronic"), tmp_path)
    with pytest.raises(ConfigError, match="'All_Beauty' is not a category of amazon2014"):
        amazon_urls("amazon2014", "All_Beauty")  # a 2018-only category


def test_unknown_source_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown source 'amazon2030'.*synthetic, amazon2014, amazon2018, amazon2023, "
                                          "files, interactions"):
        fetch(data_cfg(source="amazon2030"), tmp_path)


def test_files_source_names_the_missing_key(shared_data, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.source=files needs data\.meta"):
        fetch(data_cfg(source="files", reviews=str(shared_data / REVIEWS_2014)), tmp_path)
    with pytest.raises(ConfigError, match=r"needs data\.reviews"):
        fetch(DataConfig(source="files", meta=str(shared_data / META_2014)), tmp_path)


def test_switching_source_removes_the_previous_files(shared_data, mirror, tmp_path):
    write_jsonl_gz(mirror.root / "categoryFilesSmall" / "Digital_Music_5.json.gz", REVIEWS_2018)
    write_jsonl_gz(mirror.root / "metaFiles2" / "meta_Digital_Music.json.gz", META_2018)
    raw = tmp_path / "raw"
    fetch(data_cfg(source="amazon2018", category="Digital_Music", base_url=mirror.base_url), raw)
    (raw / "notes.txt").write_text("not ours")
    fetch(data_cfg(source="files", reviews=str(shared_data / REVIEWS_2014), meta=str(shared_data / META_2014)), raw)
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [FETCH_RECORD, "notes.txt", Path(REVIEWS_2014).name, Path(META_2014).name])


def test_detect_meta_schema(shared_data, tmp_path):
    assert detect_meta_schema(shared_data / META_2014) == "amazon2014"
    plain_2018 = tmp_path / "meta_2018.json"
    plain_2018.write_text("\n\n" + "".join(json.dumps(r) + "\n" for r in META_2018))
    assert detect_meta_schema(plain_2018) == "amazon2018"
    strict_2014 = tmp_path / "meta_2014_strict.json.gz"
    write_jsonl_gz(strict_2014, [{"asin": "x", "imUrl": "http://e/x.jpg", "categories": [["Music"]]}])
    assert detect_meta_schema(strict_2014) == "amazon2014"

    empty = tmp_path / "empty.json"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty.json: no non-empty line"):
        detect_meta_schema(empty)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"asin": "x", "name": "y"}\n')
    with pytest.raises(ValueError, match="unknown.json: cannot tell the meta schema"):
        detect_meta_schema(unknown)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("asin,title\n")
    with pytest.raises(ValueError, match="garbage.json: first line is neither JSON nor a Python literal"):
        detect_meta_schema(garbage)


def test_synthetic_source(tmp_path):
    synthetic = pytest.importorskip("marn.data.synthetic", reason="the synthetic generator is not written yet")
    if not hasattr(synthetic, "generate"):
        pytest.skip("marn.data.synthetic has no generate() yet")
    tiny = SyntheticConfig(n_users=40, n_items=30, n_categories=3, n_brands=4, image_size=16)
    raw = tmp_path / "raw"
    summary = fetch(DataConfig(source="synthetic", synthetic=tiny, seed=3), raw)
    assert summary["source"] == "synthetic" and summary["category"] == "Synthetic"
    assert set(summary["files"]) == {"reviews", "meta", "truth"}
    assert summary["files"]["meta"]["name"] == "meta_Synthetic.json.gz"
    assert summary["meta_schema"] in ("amazon2014", "amazon2018")
    assert summary["images"] == len(list((raw / "images").glob("*.jpg"))) > 0
    assert json.loads((raw / FETCH_RECORD).read_text())["files"] == summary["files"]
