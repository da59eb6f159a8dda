"""The `fetch` stage's logic: put one dataset's raw reviews and metadata into a folder, checksummed.

`data.source` picks where they come from: the embedded synthetic generator, a category of the
Amazon 2014 (McAuley et al.), 2018 (Ni et al.) or 2023 (Hou et al.) release, any two files given as paths
or URLs, or an interaction table with an optional item table (`interactions`).
`fetch.json` in the folder records what came from where, so the parser finds the files by role.
"""

from __future__ import annotations

import difflib
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marn.config import DATA_SOURCES, ConfigError, DataConfig, Params, Paths
from marn.data.amazon import open_text, parse_record
from marn.data.download import download
from marn.files import atomic_write_text, file_sha256

FETCH_RECORD = "fetch.json"
SYNTHETIC_NAME = "Synthetic"
META_SCHEMAS = ("amazon2014", "amazon2018", "amazon2023")
# 2023 item lines are keyed by parent_asin (and carry categories, a 2014 key, so they are told apart first).
_META_2023_KEYS = frozenset({"parent_asin", "main_category", "rating_number", "store"})
# Fields only one release's metadata has: 2014 writes imUrl/categories/salesRank, 2018 imageURL/category/rank.
_META_2018_KEYS = frozenset({"imageURL", "imageURLHighRes", "image", "category", "main_cat", "rank"})
_META_2014_KEYS = frozenset({"imUrl", "categories", "salesRank", "related"})


@dataclass(frozen=True)
class AmazonRelease:
    """Where one release keeps its per-category 5-core reviews and metadata, relative to `base_url`."""

    base_url: str
    reviews_path: str
    meta_path: str
    categories: tuple[str, ...]

    def urls(self, category: str, base_url: str | None = None) -> dict[str, str]:
        root = (base_url or self.base_url).rstrip("/")
        return {
            "reviews": f"{root}/{self.reviews_path.format(category=category)}",
            "meta": f"{root}/{self.meta_path.format(category=category)}",
        }


AMAZON_RELEASES = {
    # The 2014 release's files as linked from jmcauley.ucsd.edu/data/amazon/links.html (hosted by SNAP).
    "amazon2014": AmazonRelease(
        base_url="https://snap.stanford.edu/data/amazon/productGraph/categoryFiles",
        reviews_path="reviews_{category}_5.json.gz",
        meta_path="meta_{category}.json.gz",
        categories=tuple("""
            Books Electronics Movies_and_TV CDs_and_Vinyl Clothing_Shoes_and_Jewelry Home_and_Kitchen
            Kindle_Store Sports_and_Outdoors Cell_Phones_and_Accessories Health_and_Personal_Care
            Toys_and_Games Video_Games Tools_and_Home_Improvement Beauty Apps_for_Android Office_Products
            Pet_Supplies Automotive Grocery_and_Gourmet_Food Patio_Lawn_and_Garden Baby Digital_Music
            Musical_Instruments Amazon_Instant_Video
        """.split()),
    ),
    # The 2018 release (nijianmo.github.io/amazon); the same tree is also served under
    # https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2 (set data.base_url to use it).
    "amazon2018": AmazonRelease(
        base_url="https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2",
        reviews_path="categoryFilesSmall/{category}_5.json.gz",
        meta_path="metaFiles2/meta_{category}.json.gz",
        categories=tuple("""
            AMAZON_FASHION All_Beauty Appliances Arts_Crafts_and_Sewing Automotive Books CDs_and_Vinyl
            Cell_Phones_and_Accessories Clothing_Shoes_and_Jewelry Digital_Music Electronics Gift_Cards
            Grocery_and_Gourmet_Food Home_and_Kitchen Industrial_and_Scientific Kindle_Store Luxury_Beauty
            Magazine_Subscriptions Movies_and_TV Musical_Instruments Office_Products Patio_Lawn_and_Garden
            Pet_Supplies Prime_Pantry Software Sports_and_Outdoors Tools_and_Home_Improvement Toys_and_Games
            Video_Games
        """.split()),
    ),
    # The 2023 release (amazon-reviews-2023.github.io): all reviews per category (no 5-core files; set
    # data.min_interactions: 5 for the papers' 5-core subsets). Also served under
    # https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw (set data.base_url to use it).
    "amazon2023": AmazonRelease(
        base_url="https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw",
        reviews_path="review_categories/{category}.jsonl.gz",
        meta_path="meta_categories/meta_{category}.jsonl.gz",
        categories=tuple("""
            All_Beauty Amazon_Fashion Appliances Arts_Crafts_and_Sewing Automotive Baby_Products
            Beauty_and_Personal_Care Books CDs_and_Vinyl Cell_Phones_and_Accessories Clothing_Shoes_and_Jewelry
            Digital_Music Electronics Gift_Cards Grocery_and_Gourmet_Food Handmade_Products
            Health_and_Household Health_and_Personal_Care Home_and_Kitchen Industrial_and_Scientific
            Kindle_Store Magazine_Subscriptions Movies_and_TV Musical_Instruments Office_Products
            Patio_Lawn_and_Garden Pet_Supplies Software Sports_and_Outdoors Subscription_Boxes
            Tools_and_Home_Improvement Toys_and_Games Video_Games Unknown
        """.split()),
    ),
}


def run(config: Params, paths: Paths) -> dict:
    """Stage `fetch`: the raw files of `data.source` into `paths.raw`."""
    return fetch(config.data, paths.raw)


def fetch(data: DataConfig, raw_dir: Path) -> dict:
    """Fetch the dataset `data.source` names into `raw_dir`, with the `data` keys that source needs.

    Returns the summary that is also written to `raw_dir/fetch.json`: source, category, per role
    (reviews, meta) the file's name, size and sha256, the urls, the detected meta schema. No timings or
    machine paths: the same data gives the same bytes on any machine, so DVC reruns nothing downstream.
    """
    fetchers = {
        "synthetic": _fetch_synthetic,
        "amazon2014": _fetch_amazon,
        "amazon2018": _fetch_amazon,
        "amazon2023": _fetch_amazon,
        "files": _fetch_given_files,
        "interactions": _fetch_given_files,
    }
    if data.source not in fetchers:
        raise ConfigError(f"data.source: unknown source {data.source!r}; valid sources: {', '.join(fetchers)}")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    summary = fetchers[data.source](data, raw_dir)
    meta = summary["files"].get("meta")  # an interactions source may have no item table, and no meta schema
    summary["meta_schema"] = detect_meta_schema(raw_dir / meta["name"]) if meta else None
    _remove_stale_files(raw_dir, summary)
    record = json.loads(json.dumps(summary, default=_to_plain))  # callers get exactly what fetch.json holds
    atomic_write_text(raw_dir / FETCH_RECORD, json.dumps(record, indent=2) + "\n")
    return record


def amazon_urls(source: str, category: str, base_url: str | None = None) -> dict[str, str]:
    """The reviews and meta URLs of `category` in the `source` release ("amazon2014", "amazon2018", "amazon2023")."""
    release = AMAZON_RELEASES[source]
    if category not in release.categories:
        close = difflib.get_close_matches(category, release.categories, n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(
            f"data.category: {category!r} is not a category of {source}.{hint} "
            f"Known categories: {', '.join(release.categories)}"
        )
    return release.urls(category, base_url)


def fetched_files(raw_dir: Path) -> dict[str, Path]:
    """The files `fetch` put in `raw_dir`, by role ("reviews", "meta", and "truth" for synthetic data;
    "interactions" and, where given, "items" for an interactions source)."""
    summary = read_fetch_record(raw_dir)
    return {role: Path(raw_dir) / entry["name"] for role, entry in summary["files"].items()}


def read_fetch_record(raw_dir: Path) -> dict:
    """`fetch.json`: what `fetch` put in `raw_dir` and where it came from."""
    summary_path = Path(raw_dir) / FETCH_RECORD
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found: run the fetch stage first")
    return json.loads(summary_path.read_text())


def fetched_origins(raw_dir: Path) -> dict[str, str]:
    """Each fetched file by role as the user named it: `data.<role>=<value>` for files they gave, the URL of a
    release file, or the file's name for generated data. Error messages name these, not the copies in raw_dir."""
    summary = read_fetch_record(raw_dir)
    urls = summary.get("urls") or {}
    given = bool(DATA_SOURCES.get(summary["source"]))  # sources whose files are data.* values
    return {role: (f"data.{role}={urls[role]}" if given else urls[role]) if role in urls else entry["name"]
            for role, entry in summary["files"].items()}


def detect_meta_schema(path: Path) -> str:
    """Which release's layout a metadata file (.json or .json.gz) follows, from its first non-empty line.

    "amazon2014": the 2014 field names (imUrl, categories, salesRank), lines usually Python literals;
    "amazon2018": the 2018 field names (imageURL/image, category, main_cat, rank), strict JSON;
    "amazon2023": the 2023 field names (parent_asin, main_category, rating_number, store), strict JSON.
    """
    line = _first_non_empty_line(Path(path))
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        try:
            parse_record(line)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"{path}: first line is neither JSON nor a Python literal: {line[:80]!r}") from err
        return "amazon2014"  # only the 2014 release writes Python literals
    if not isinstance(record, dict):
        raise ValueError(f"{path}: first line is not an object: {line[:80]!r}")
    if record.keys() & _META_2023_KEYS:
        return "amazon2023"
    if record.keys() & _META_2018_KEYS:
        return "amazon2018"
    if record.keys() & _META_2014_KEYS:
        return "amazon2014"
    raise ValueError(
        f"{path}: cannot tell the meta schema from the keys {sorted(record)}; expected 2014 keys "
        f"({', '.join(sorted(_META_2014_KEYS))}) or 2018 keys ({', '.join(sorted(_META_2018_KEYS))})"
    )


def _first_non_empty_line(path: Path) -> str:
    with open_text(path) as f:
        for line in f:
            if line.strip():
                return line.strip()
    raise ValueError(f"{path}: no non-empty line, cannot detect the meta schema")


def _fetch_synthetic(data: DataConfig, raw_dir: Path) -> dict:
    from marn.data.synthetic import generate  # the generator pulls in imaging libraries only this source needs

    generated = generate(raw_dir, data.synthetic, seed=data.seed, name=SYNTHETIC_NAME)
    names = {
        "reviews": f"reviews_{SYNTHETIC_NAME}.json.gz",
        "meta": f"meta_{SYNTHETIC_NAME}.json.gz",
        "truth": "truth.npz",
    }
    return {
        "source": "synthetic",
        "category": SYNTHETIC_NAME,
        "files": {role: _describe(raw_dir / name) for role, name in names.items()},
        "urls": {},
        "images": sum(1 for _ in (raw_dir / "images").glob("*.jpg")),
        "generator": generated,
    }


def _fetch_amazon(data: DataConfig, raw_dir: Path) -> dict:
    urls = amazon_urls(data.source, data.category, data.base_url)
    return {
        "source": data.source,
        "category": data.category,
        "files": {role: _describe(download(url, raw_dir / _base_name(url))) for role, url in urls.items()},
        "urls": urls,
    }


# The optional files of each source of given files; DATA_SOURCES names the required ones.
OPTIONAL_FILES = {"files": (), "interactions": ("items",)}


def _fetch_given_files(data: DataConfig, raw_dir: Path) -> dict:
    """Download the files `data.<role>` names: every role the source requires, and its optional ones that are set."""
    required = DATA_SOURCES[data.source]
    urls = {}
    for role in required + OPTIONAL_FILES[data.source]:
        value = getattr(data, role)
        if not value and role in required:
            raise ConfigError(f"data.source={data.source} needs data.{role}: a local path or a file:// / "
                              "http(s):// URL")
        if value:
            urls[role] = value
    names = {role: _base_name(url) for role, url in urls.items()}
    if len(set(names.values())) < len(names):
        first, second = list(names)[:2]
        raise ConfigError(f"data.{first} and data.{second} have the same file name {names[second]!r}; rename one")
    return {
        "source": data.source,
        "category": None,
        "files": {role: _describe(download(urls[role], raw_dir / names[role])) for role in urls},
        "urls": urls,
    }


def _remove_stale_files(raw_dir: Path, summary: dict) -> None:
    """Delete files an earlier fetch into `raw_dir` recorded that this one did not bring.

    The parser expects one reviews and one meta file in the folder; a switch of source must not leave two.
    """
    record_path = raw_dir / FETCH_RECORD
    if not record_path.is_file():
        return
    try:
        previous = {entry["name"] for entry in json.loads(record_path.read_text())["files"].values()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return  # an unreadable record names nothing we could safely delete
    kept = {entry["name"] for entry in summary["files"].values()}
    for name in previous - kept:
        stale = raw_dir / Path(name).name
        if stale.is_file():
            stale.unlink()


def _base_name(url: str) -> str:
    """The file name a URL or path ends in."""
    parsed = urllib.parse.urlsplit(url)
    path = urllib.parse.unquote(parsed.path) if parsed.scheme else url
    name = Path(path).name
    if not name:
        raise ConfigError(f"{url!r} does not end in a file name")
    return name


def _describe(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"expected {path} to exist after fetching")
    return {"name": path.name, "size": path.stat().st_size, "sha256": file_sha256(path)}


def _to_plain(value: Any) -> Any:
    """numpy values in the generator's summary become plain numbers and lists, anything else its text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)

