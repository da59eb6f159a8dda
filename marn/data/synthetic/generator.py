"""Draw a catalogue, users and their behaviours, and write them as Amazon 2014 files plus the ground truth."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from marn.config import SyntheticConfig
from marn.data.synthetic import images as pictures
from marn.files import atomic_path
from marn.data.synthetic.choice import ChoiceModel
from marn.data.synthetic.lexicon import (
    FILLER_WORDS, FIRST_NAMES, IMAGE_FAMILIES, MAX_FACTOR_LEVELS, REVIEW_SENTENCES, REVIEW_SUMMARIES,
    SHARED_FAMILIES, SYNONYMS, TITLE_FAMILIES, brand_name, category_name,
)

HOUR, DAY = 3600, 86400
TIME_START = 1262304000  # 2010-01-01 UTC
TIME_END = 1404172800  # 2014-07-01 UTC, about where the Amazon 2014 crawl ends
TEST_WINDOW = 120 * DAY  # every user's last behaviour falls in it; cold items are released in its first half
TRAIN_END = TIME_END - TEST_WINDOW
EMPTY_TITLE_SHARE = 0.02
SHORT_TITLE_SHARE = 0.1
IMAGE_BATCH = 256
CONFIG_KEY = "data.synthetic"


def generate(out_dir: Path, cfg: SyntheticConfig, seed: int, name: str = "Synthetic") -> dict:
    """Write `reviews_<name>.json.gz`, `meta_<name>.json.gz`, `images/<asin>.jpg` and `truth.npz` into
    `out_dir`; return counts. The same `cfg` and `seed` give byte-identical files."""
    check_config(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    item_rng, user_rng, behaviour_rng, text_rng, image_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(5))

    catalogue = _draw_catalogue(cfg, item_rng)
    users = _draw_users(cfg, catalogue, user_rng)
    truth = {**catalogue["truth"], **users["truth"], "quality_weight": np.float64(cfg.quality_weight),
             "train_end_time": np.int64(TRAIN_END), "time_range": np.array([TIME_START, TIME_END], dtype=np.int64)}
    model = ChoiceModel(truth)
    items = _draw_behaviours(model, users["offsets"], users["times"], behaviour_rng)

    files = {"reviews": f"reviews_{name}.json.gz", "meta": f"meta_{name}.json.gz", "truth": "truth.npz"}
    n_images = _write_images(out_dir, catalogue, cfg.image_size, image_rng) if cfg.write_images else 0
    _write_meta(out_dir / files["meta"], catalogue, users["offsets"], items, name, cfg.write_images, text_rng)
    _write_reviews(out_dir / files["reviews"], catalogue, users, items, text_rng)
    _write_npz(out_dir / files["truth"], truth)
    return {
        "name": name,
        "users": len(users["offsets"]) - 1,
        "items": cfg.n_items,
        "cold_items": int(catalogue["truth"]["item_cold"].sum()),
        "reviewed_items": int(np.unique(items).size),
        "reviews": len(items),
        "categories": int(np.unique(catalogue["truth"]["item_category"]).size),
        "brands": int(np.unique(catalogue["truth"]["item_brand"]).size),
        "images": n_images,
        "train_end_time": TRAIN_END,
        "files": files,
    }


def check_config(cfg: SyntheticConfig) -> None:
    """Reject settings the generator cannot honour, naming the key: the section's ranges, then its own limits."""
    problems = cfg.problems(CONFIG_KEY)
    if problems:
        raise ValueError(problems[0])
    families = {"shared_factors": SHARED_FAMILIES, "image_factors": IMAGE_FAMILIES, "title_factors": TITLE_FAMILIES}
    for key, available in families.items():
        if not 0 <= getattr(cfg, key) <= len(available):
            raise ValueError(f"{CONFIG_KEY}.{key} must be in [0, {len(available)}], got {getattr(cfg, key)}")
    if cfg.factor_levels > MAX_FACTOR_LEVELS:
        raise ValueError(f"{CONFIG_KEY}.factor_levels must be in [2, {MAX_FACTOR_LEVELS}], got {cfg.factor_levels}")
    n_warm = cfg.n_items - _n_cold(cfg)
    if cfg.min_seq_len > n_warm:
        raise ValueError(f"{CONFIG_KEY}.min_seq_len ({cfg.min_seq_len}) exceeds the {n_warm} items released "
                         "before the test window; raise n_items or lower cold_item_share")


def _n_cold(cfg: SyntheticConfig) -> int:
    return int(round(cfg.cold_item_share * cfg.n_items))


def _draw_catalogue(cfg: SyntheticConfig, rng: np.random.Generator) -> dict:
    n, n_cat, levels = cfg.n_items, cfg.n_categories, cfg.factor_levels
    # every category gets an item while there are enough; the rest follow Zipf
    zipf = 1.0 / np.arange(1, n_cat + 1)
    seeded = min(n, n_cat)
    category = rng.permutation(np.concatenate(
        [np.arange(seeded), rng.choice(n_cat, size=n - seeded, p=zipf / zipf.sum())]))
    # each category has its own Zipf ranking of the brands
    brand_zipf = 1.0 / np.arange(1, cfg.n_brands + 1) ** 1.1
    brand_rank = rng.choice(cfg.n_brands, size=n, p=brand_zipf / brand_zipf.sum())
    brand_order = np.argsort(rng.random((n_cat, cfg.n_brands)), axis=1)
    brand = brand_order[category, brand_rank]
    brand_quality = rng.normal(0.0, 0.5, cfg.n_brands)
    quality = (brand_quality[brand] + rng.normal(0.0, 0.8, n)).astype(np.float32)
    log_popularity = rng.normal(0.0, cfg.popularity_sigma, n).astype(np.float32)

    # shared factors cluster around a category's typical levels; the specific ones hardly depend on category
    shared = _levels_by_category(category, n_cat, cfg.shared_factors, levels, concentration=0.6, rng=rng)
    image = _levels_by_category(category, n_cat, cfg.image_factors, levels, concentration=3.0, rng=rng)
    title = _levels_by_category(category, n_cat, cfg.title_factors, levels, concentration=3.0, rng=rng)

    image_emphasis = rng.uniform(0.2, 0.8, n_cat)[:, None]
    factor_weight = np.concatenate([
        np.ones((n_cat, cfg.shared_factors)),
        np.repeat(2.0 * image_emphasis, cfg.image_factors, axis=1),
        np.repeat(2.0 * (1.0 - image_emphasis), cfg.title_factors, axis=1),
    ], axis=1).astype(np.float32)
    n_factors = factor_weight.shape[1]
    population_taste = rng.normal(0.0, 0.3, (n_factors, levels)).astype(np.float32)

    cold = np.zeros(n, dtype=bool)
    cold[rng.choice(n, size=_n_cold(cfg), replace=False)] = True
    release = np.full(n, TIME_START, dtype=np.int64)
    release[cold] = rng.integers(TRAIN_END, TRAIN_END + TEST_WINDOW // 2, size=cold.sum())

    factor_names = ([f"shared/{f.name}" for f in SHARED_FAMILIES[:cfg.shared_factors]]
                    + [f"image/{f.name}" for f in IMAGE_FAMILIES[:cfg.image_factors]]
                    + [f"title/{f.name}" for f in TITLE_FAMILIES[:cfg.title_factors]])
    truth = {
        "asin": _asins(n),
        "item_category": category.astype(np.int32),
        "category_names": np.array([category_name(c)[1] for c in range(n_cat)]),
        "item_brand": brand.astype(np.int32),
        "brand_names": np.array([brand_name(b) for b in range(cfg.n_brands)]),
        "factor_names": np.array(factor_names, dtype="<U32"),
        "item_shared_levels": shared,
        "item_image_levels": image,
        "item_title_levels": title,
        "category_factor_weight": factor_weight,
        "population_taste": population_taste,
        "item_quality": quality,
        "item_log_popularity": log_popularity,
        "item_release_time": release,
        "item_cold": cold,
    }
    return {"truth": truth, "price": _prices(category, n_cat, quality, rng), "sales_rank": _sales_ranks(
        log_popularity, quality, rng)}


def _levels_by_category(category, n_categories, n_factors, n_levels, concentration, rng) -> np.ndarray:
    """Per (category, factor) a Dirichlet distribution over levels; each item draws its level from it."""
    level_probs = rng.dirichlet(np.full(n_levels, concentration), size=(n_categories, n_factors))
    cdf = np.cumsum(level_probs, axis=2)[category]  # (items, factors, levels)
    u = rng.random((len(category), n_factors, 1))
    return np.minimum((cdf <= u).sum(axis=2), n_levels - 1).astype(np.int8)


def _prices(category, n_categories, quality, rng) -> np.ndarray:
    log_median = rng.uniform(np.log(8.0), np.log(200.0), n_categories)
    price = np.exp(log_median[category] + 0.35 * quality + rng.normal(0.0, 0.4, len(category)))
    return np.maximum(np.round(price, 2), 0.99)


def _sales_ranks(log_popularity, quality, rng) -> np.ndarray:
    # ranks as in a catalogue about 23 times larger than ours, as Amazon ranks span all of a top category
    sales = log_popularity + 0.4 * quality + rng.normal(0.0, 0.3, len(quality))
    place = np.empty(len(sales), dtype=np.int64)
    place[np.argsort(-sales, kind="stable")] = np.arange(len(sales))
    return place * 23 + rng.integers(1, 24, len(sales))


def _draw_users(cfg: SyntheticConfig, catalogue: dict, rng: np.random.Generator) -> dict:
    n_users = cfg.n_users
    truth = catalogue["truth"]
    n_factors, n_levels = truth["population_taste"].shape
    n_warm = cfg.n_items - int(truth["item_cold"].sum())
    longest = min(cfg.max_seq_len, n_warm)  # a user never reviews an item twice
    lengths_possible = np.arange(cfg.min_seq_len, longest + 1)
    length_probs = lengths_possible.astype(np.float64) ** -cfg.seq_len_exponent
    lengths = rng.choice(lengths_possible, size=n_users, p=length_probs / length_probs.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    times = _draw_times(lengths, offsets, rng)

    taste_start, taste_moved = _draw_tastes(n_users, n_factors, n_levels, cfg.active_factors,
                                            cfg.preference_strength, rng)
    taste_end = (1.0 - cfg.preference_drift) * taste_start + cfg.preference_drift * taste_moved
    names = np.array([f"{FIRST_NAMES[a]} {chr(65 + b)}." for a, b in zip(
        rng.integers(0, len(FIRST_NAMES), n_users).tolist(), rng.integers(0, 26, n_users).tolist())])
    user_truth = {
        "reviewer_id": _reviewer_ids(n_users),
        "user_taste_start": taste_start.astype(np.float32),
        "user_taste_end": taste_end.astype(np.float32),
        "user_time_start": times[offsets[:-1]],
        "user_time_end": times[offsets[1:] - 1],
        "user_category_affinity": rng.normal(0.0, 1.2, (n_users, cfg.n_categories)).astype(np.float32),
    }
    return {"truth": user_truth, "offsets": offsets, "times": times, "names": names}


def _draw_tastes(n_users, n_factors, n_levels, n_active, strength, rng) -> tuple[np.ndarray, np.ndarray]:
    """Each user likes one level of each of a few factors, each with its own strength; the second taste
    keeps the factors and strengths but draws the favourite levels afresh (where a drifting taste heads)."""
    active = np.argsort(rng.random((n_users, n_factors)), axis=1)[:, :n_active]
    liking = strength * np.exp(rng.normal(0.0, 0.25, (n_users, n_active)))
    tastes = []
    for _ in range(2):
        taste = np.zeros((n_users, n_factors, n_levels))
        taste[np.arange(n_users)[:, None], active, rng.integers(0, n_levels, (n_users, n_active))] = liking
        tastes.append(taste)
    return tastes[0], tastes[1]


def _draw_times(lengths: np.ndarray, offsets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unix seconds, increasing per user: the last behaviour in the test window, the others before it with
    gaps of hours to months (squeezed for long histories so they start after TIME_START)."""
    n_users = len(lengths)
    before = lengths - 1
    n_gaps = np.maximum(before - 1, 0)
    gaps = np.clip(rng.lognormal(np.log(10 * DAY), 1.5, n_gaps.sum()), HOUR, 365 * DAY)
    owner = np.repeat(np.arange(n_users), n_gaps)
    anchor = TRAIN_END - np.clip(rng.lognormal(np.log(20 * DAY), 1.0, n_users), HOUR, 365 * DAY).astype(np.int64)
    room = (anchor - TIME_START) * 0.98
    squeeze = np.minimum(1.0, room / np.maximum(np.bincount(owner, gaps, minlength=n_users), 1.0))
    gaps = np.maximum(np.floor(gaps * squeeze[owner]), 1).astype(np.int64)

    # steps: 0 at each user's first behaviour, then the gaps; a per-user running sum gives the times
    steps = np.zeros(before.sum(), dtype=np.int64)
    rank = np.arange(before.sum()) - np.repeat(np.cumsum(before) - before, before)
    steps[rank > 0] = gaps
    running = np.cumsum(steps)
    first = np.cumsum(before) - before
    user_of_step = np.repeat(np.arange(n_users), before)
    within = running - running[first[user_of_step]]
    span = np.bincount(owner, gaps, minlength=n_users).astype(np.int64)

    times = np.empty(lengths.sum(), dtype=np.int64)
    times[offsets[user_of_step] + rank] = anchor[user_of_step] - span[user_of_step] + within
    times[offsets[1:] - 1] = rng.integers(TRAIN_END, TIME_END, n_users)
    return times


def _draw_behaviours(model: ChoiceModel, offsets: np.ndarray, times: np.ndarray, rng) -> np.ndarray:
    """The reviewed item of every behaviour, position by position so each draw can exclude earlier ones."""
    lengths = np.diff(offsets)
    items = np.full(len(times), -1, dtype=np.int64)
    for position in tqdm(range(int(lengths.max())), desc="synthetic behaviours", unit="position"):
        users = np.nonzero(lengths > position)[0]
        rows = offsets[users] + position
        seen = items[offsets[users][:, None] + np.arange(position)]
        items[rows] = model.sample(users, times[rows], seen, rng)
    return items


def _asins(n: int) -> np.ndarray:
    # an affine map mod 36^9 spreads consecutive indices over the ID space, so ASIN order says nothing
    return np.array(["B" + _base36((i * 2_654_435_761 + 1_234_567_891) % 36**9, 9) for i in range(n)])


def _reviewer_ids(n: int) -> np.ndarray:
    return np.array(["A" + _base36((i * 3_141_592_653_589 + 271_828_182_845) % 36**13, 13) for i in range(n)])


def _base36(value: int, width: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = []
    for _ in range(width):
        value, digit = divmod(value, 36)
        out.append(digits[digit])
    return "".join(reversed(out))


def _titles(catalogue: dict, rng: np.random.Generator) -> list[str]:
    """Brand, category word, one word of each shared and title-only factor's level cluster and fillers,
    shuffled; some titles keep the category word and up to two factor words only, some are empty."""
    truth = catalogue["truth"]
    n_items = len(truth["asin"])
    families = (SHARED_FAMILIES[:truth["item_shared_levels"].shape[1]]
                + TITLE_FAMILIES[:truth["item_title_levels"].shape[1]])
    levels = np.concatenate([truth["item_shared_levels"], truth["item_title_levels"]], axis=1).tolist()
    synonym = rng.integers(0, SYNONYMS, (n_items, len(families))).tolist()
    kind = rng.random(n_items).tolist()
    n_kept = rng.integers(0, 3, n_items).tolist()
    fillers = [[_capitalized(FILLER_WORDS[k]) for k in row[:count]] for row, count in zip(
        rng.integers(0, len(FILLER_WORDS), (n_items, 2)).tolist(), rng.integers(0, 3, n_items).tolist())]
    shuffle_keys = rng.random((n_items, len(families) + 4))
    nouns = [_capitalized(category_name(c)[0]) for c in range(len(truth["category_names"]))]
    categories, brands = truth["item_category"].tolist(), truth["brand_names"][truth["item_brand"]].tolist()
    titles = []
    for j in range(n_items):
        if kind[j] < EMPTY_TITLE_SHARE:
            titles.append("")
            continue
        named = [_capitalized(f.words[level][pick]) for f, level, pick in zip(families, levels[j], synonym[j])]
        if kind[j] < EMPTY_TITLE_SHARE + SHORT_TITLE_SHARE:
            words = [nouns[categories[j]]] + [named[k] for k in np.argsort(shuffle_keys[j, :len(named)])[:n_kept[j]]]
        else:
            words = [nouns[categories[j]], *named, brands[j], *fillers[j]]
        titles.append(" ".join(words[k] for k in np.argsort(shuffle_keys[j, :len(words)])))
    return titles


def _capitalized(word: str) -> str:
    return word[:1].upper() + word[1:]


def _also_bought(offsets: np.ndarray, items: np.ndarray, n_items: int, top: int = 4) -> list[list[int]]:
    """For each item, the items that most often came next in a history (the last behaviours left out, so
    the test targets leak nowhere)."""
    lengths = np.diff(offsets)
    position = np.arange(len(items)) - np.repeat(offsets[:-1], lengths)
    follows = position[1:] > 0  # item k+1 follows item k of the same user
    before_last = np.repeat(lengths, lengths)[1:] - 1 > position[1:]
    keep = follows & before_last
    pair = items[:-1][keep] * n_items + items[1:][keep]
    pairs, counts = np.unique(pair, return_counts=True)
    first, second = pairs // n_items, pairs % n_items
    order = np.lexsort((second, -counts, first))
    related = [[] for _ in range(n_items)]
    for a, b in zip(first[order].tolist(), second[order].tolist()):
        if len(related[a]) < top:
            related[a].append(b)
    return related


def _write_meta(path: Path, catalogue: dict, offsets, items, name: str, with_images: bool, rng) -> None:
    truth = catalogue["truth"]
    asin = truth["asin"]
    titles = _titles(catalogue, rng)
    related = _also_bought(offsets, items, len(asin))
    lines = []
    for j in np.argsort(asin, kind="stable").tolist():
        record = {"asin": str(asin[j]), "title": titles[j], "price": float(catalogue["price"][j])}
        if with_images:
            record["imUrl"] = f"images/{asin[j]}.jpg"
        record["related"] = {"also_bought": [str(asin[k]) for k in related[j]]}
        record["salesRank"] = {name: int(catalogue["sales_rank"][j])}
        record["categories"] = [[name, str(truth["category_names"][truth["item_category"][j]])]]
        record["brand"] = str(truth["brand_names"][truth["item_brand"][j]])
        lines.append(repr(record))
    with _atomic_gzip(path) as out:
        out.write(("\n".join(lines) + "\n").encode("utf-8"))


def _write_reviews(path: Path, catalogue: dict, users: dict, items: np.ndarray, rng) -> None:
    truth = catalogue["truth"]
    n = len(items)
    user_of = np.repeat(np.arange(len(users["offsets"]) - 1), np.diff(users["offsets"]))
    times = users["times"]
    rating = np.clip(np.rint(4.1 + 0.75 * truth["item_quality"][items] + rng.normal(0.0, 0.9, n)), 1, 5)
    band = np.where(rating <= 2, 0, np.where(rating == 3, 1, 2))
    n_sentences = rng.integers(2, 5, n)
    sentence = np.argsort(rng.random((n, len(REVIEW_SENTENCES[0]))), axis=1)[:, :4]  # no sentence twice
    summary = rng.integers(0, len(REVIEW_SUMMARIES[0]), n)
    votes = rng.geometric(0.55, n) - 1
    helpful_votes = rng.binomial(votes, 0.75)
    category = truth["item_category"].tolist()
    # every review sentence and summary with the category's noun filled in, once per category
    sentences = [[[text.format(noun=category_name(c)[0]) for text in band] for band in REVIEW_SENTENCES]
                 for c in range(len(truth["category_names"]))]
    summaries = [[[text.format(noun=category_name(c)[0]) for text in band] for band in REVIEW_SUMMARIES]
                 for c in range(len(truth["category_names"]))]
    asin = truth["asin"].tolist()
    reviewer_id = users["truth"]["reviewer_id"].tolist()
    reviewer_name = users["names"].tolist()
    day_text = {}

    # the real files list an item's reviews together, items in ASIN order
    asin_rank = np.empty(len(asin), dtype=np.int64)
    asin_rank[np.argsort(truth["asin"], kind="stable")] = np.arange(len(asin))
    order = np.lexsort((times, asin_rank[items]))
    columns = (user_of[order], items[order], rating[order], band[order], n_sentences[order],
               sentence[order], summary[order], votes[order], helpful_votes[order], times[order])
    with _atomic_gzip(path) as out:
        batch = []
        for (user, item, stars, b, k, picks, s, total, up, t) in tqdm(
                zip(*(c.tolist() for c in columns)), total=n, desc="synthetic reviews", unit="review",
                mininterval=2.0):
            day = t // DAY
            if day not in day_text:
                day_text[day] = _review_day(day)
            pool = sentences[category[item]][b]
            record = {
                "reviewerID": reviewer_id[user],
                "asin": asin[item],
                "reviewerName": reviewer_name[user],
                "helpful": [up, total],
                "reviewText": " ".join([pool[i] for i in picks[:k]]),
                "overall": stars,
                "summary": summaries[category[item]][b][s],
                "unixReviewTime": t,
                "reviewTime": day_text[day],
            }
            batch.append(json.dumps(record))
            if len(batch) >= 10000:
                out.write(("\n".join(batch) + "\n").encode("utf-8"))
                batch = []
        if batch:
            out.write(("\n".join(batch) + "\n").encode("utf-8"))


def _review_day(day: int) -> str:
    """'MM D, YYYY' as in the real files: month zero-padded, day not."""
    date = dt.datetime.fromtimestamp(day * DAY, tz=dt.timezone.utc)
    return f"{date.month:02d} {date.day}, {date.year}"


def _write_images(out_dir: Path, catalogue: dict, size: int, rng: np.random.Generator) -> int:
    truth = catalogue["truth"]
    folder = out_dir / "images"
    folder.mkdir(exist_ok=True)
    looks = pictures.item_looks(truth["item_shared_levels"], truth["item_image_levels"])
    n = len(truth["asin"])
    for start in tqdm(range(0, n, IMAGE_BATCH), desc="synthetic images", unit="batch", mininterval=2.0):
        batch = slice(start, min(start + IMAGE_BATCH, n))
        drawn = pictures.render({key: value[batch] for key, value in looks.items()}, size, rng)
        for asin, pixels in zip(truth["asin"][batch], drawn):
            with _atomic(folder / f"{asin}.jpg") as out:
                out.write(pictures.encode_jpeg(pixels))
    return n


def _write_npz(path: Path, arrays: dict) -> None:
    """`np.savez_compressed` stamps each member with the clock; fixed stamps keep the bytes reproducible."""
    with _atomic(path) as out, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.asanyarray(value), allow_pickle=False)


@contextmanager
def _atomic(path: Path):
    """A binary file under a temporary name, renamed to `path` only once it is complete."""
    with atomic_path(path) as temporary, open(temporary, "wb") as out:
        yield out


@contextmanager
def _atomic_gzip(path: Path):
    # no file name and mtime 0 in the gzip header, so equal content gives equal bytes
    with _atomic(path) as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as out:
        yield out
