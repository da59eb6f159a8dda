"""Stage `abtest`: an offline simulation of the paper's online A/B test (Table 6), with its glue to the data
and the trained models. It is a simulation, and says so in everything it writes.

- Users: the test users (at most `abtest.max_users`, drawn by the seed), each with their test history.
- Arms: a salted hash of the user id puts each user in the control or a treatment (`abtest.traffic`).
  An arm is a model of the registry, loaded from `<models_dir>/<model name>/model.pt`, or a built-in arm:
  `oracle` ranks by the true relevance (synthetic data only: the ceiling) and `random` ranks at random
  (the floor).
- Requests: a user makes 1 + Poisson(requests_per_user - 1) requests on days drawn uniformly from the
  test's `days`; each request's candidates are the user's held-out test item plus `candidates - 1` items
  drawn afresh, uniformly among the items the user never touched and already seen in the logs by the
  user's test time. The arm shows its `slate_size` best-scored candidates.
- Relevance, P(click | examined) = 1 - (1 - p) ** relevance_draws, where p is the probability that the
  item is the user's next choice given the items already chosen: on synthetic data the generator's true
  probability (`truth.npz`), on real data the response model of `marn.abtest.response` (biased, see there).
- Clicks, purchases and GMV: `marn.abtest.simulation`; lifts and intervals: `marn.abtest.statistics`.

Writes `out_path` (JSON), the PNG `plot_path` of the cumulative lift per day with its interval band, and
the daily rows beside it (`plot_path` with suffix .json).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from marn import ops
from marn.abtest.response import BIAS_NOTE, fit_response_model
from marn.abtest.simulation import (
    CLICK_MODELS, METRICS, Requests, assign_arms, compare_arms, cumulative_daily_lifts, simulate_responses,
)
from marn.abtest.statistics import INTERVAL_METHODS
from marn.data.dataset import CTRDataset
from marn.data.fetch import fetched_files
from marn.data.item_table import RESERVED_ENTRIES, load_item_table
from marn.data.prepare import SAMPLE_DTYPE
from marn.data.synthetic import load_choice_model, true_click_probability
from marn.models.persistence import load_model
from marn.models.registry import MODELS, model_folder

log = logging.getLogger(__name__)

BUILTIN_ARMS = ("oracle", "random")
RELEVANCE_SOURCES = ("auto", "truth", "response")
SIMULATION_NOTE = ("offline simulation of an online A/B test: no live traffic; users, requests, clicks and "
                   "purchases are simulated from a click model and a relevance model")
TRUTH_NOTE = ("relevance from the synthetic generator's true next-choice probabilities (truth.npz): the "
              "responses are right by construction; what differs between arms is their ranking")
_CANDIDATE_CHUNK_ELEMENTS = 1 << 22  # (request, item) eligibility flags held at once when drawing candidates


def check_abtest_config(ab) -> list[str]:
    """The arm names, control first; fails naming the first bad `abtest.*` value."""
    arms = [str(ab.control), *(str(t) for t in ab.treatments)]
    if not ab.treatments:
        raise ValueError("abtest.treatments is empty: name at least one model or built-in arm to test")
    for key, name in [("abtest.control", arms[0])] + [(f"abtest.treatments[{i}]", n) for i, n in enumerate(arms[1:])]:
        if name not in MODELS and name not in BUILTIN_ARMS:
            raise ValueError(f"{key}: unknown model {name!r}; known: {', '.join(MODELS)}, "
                             f"and the built-in arms {', '.join(BUILTIN_ARMS)}")
    duplicated = sorted({n for n in arms if arms.count(n) > 1})
    if duplicated:
        raise ValueError(f"abtest: arm {duplicated[0]!r} is listed more than once (control and treatments)")
    if ab.traffic and len(ab.traffic) != len(arms):
        raise ValueError(f"abtest.traffic has {len(ab.traffic)} shares for {len(arms)} arms ({', '.join(arms)})")
    for i, share in enumerate(ab.traffic):
        if not share > 0:
            raise ValueError(f"abtest.traffic[{i}] ({arms[i]}) must be > 0, got {share}: an arm needs users")
    if ab.traffic and not np.isclose(sum(ab.traffic), 1.0):
        raise ValueError(f"abtest.traffic must sum to 1, got {sum(ab.traffic)}")
    checks = [
        ("candidates", ab.candidates >= 2, ">= 2"),
        ("slate_size", ab.slate_size >= 1, ">= 1"),
        ("days", ab.days >= 1, ">= 1"),
        ("requests_per_user", ab.requests_per_user >= 1, ">= 1"),
        ("max_users", ab.max_users >= 0, ">= 0 (0 = all test users)"),
        ("click_model", ab.click_model in CLICK_MODELS, f"one of {', '.join(CLICK_MODELS)}"),
        ("position_bias", ab.position_bias >= 0, ">= 0"),
        ("relevance", ab.relevance in RELEVANCE_SOURCES, f"one of {', '.join(RELEVANCE_SOURCES)}"),
        ("relevance_draws", ab.relevance_draws > 0, "> 0"),
        ("purchase_probability", 0 <= ab.purchase_probability <= 1, "in [0, 1]"),
        ("interval", ab.interval in INTERVAL_METHODS, f"one of {', '.join(INTERVAL_METHODS)}"),
        ("bootstrap_samples", ab.bootstrap_samples >= 100, ">= 100"),
        ("confidence", 0 < ab.confidence < 1, "in (0, 1)"),
        ("power", 0 < ab.power < 1, "in (0, 1)"),
        ("batch_size", ab.batch_size >= 1, ">= 1"),
    ]
    for key, ok, rule in checks:
        if not ok:
            raise ValueError(f"abtest.{key} must be {rule}, got {getattr(ab, key)!r}")
    if ab.slate_size > ab.candidates:
        raise ValueError(f"abtest.slate_size ({ab.slate_size}) is larger than the candidate pool of a request "
                         f"(abtest.candidates = {ab.candidates})")
    return arms


def relevance_source(ab, raw_dir: Path, arms: list[str]) -> str:
    """`truth` or `response`: `auto` picks the truth where the fetched data has one (synthetic)."""
    has_truth = "truth" in fetched_files(raw_dir)
    if ab.relevance == "truth" and not has_truth:
        raise ValueError(f"abtest.relevance is 'truth' but {raw_dir} has no truth.npz (only synthetic data has one)")
    source = ("truth" if has_truth else "response") if ab.relevance == "auto" else str(ab.relevance)
    if "oracle" in arms and source != "truth":
        raise ValueError("abtest: the 'oracle' arm ranks by the true relevance, which only synthetic data has "
                         f"(relevance source here: {source})")
    return source


@dataclass(frozen=True)
class Population:
    """The experiment's users, one row each."""

    user: np.ndarray  # prepared user index
    user_id: np.ndarray  # reviewer ID string
    position: np.ndarray  # behaviours before the held-out one
    held_out: np.ndarray  # item index of the user's test behaviour
    time: np.ndarray  # unix seconds of the test behaviour: when the user's requests are answered


@dataclass(frozen=True)
class _Logs:
    """The prepared behaviour sequences (docs/FORMATS.md) and when each item was first seen in them."""

    offsets: np.ndarray
    items: np.ndarray
    times: np.ndarray
    item_first_seen: np.ndarray  # [N] unix seconds of each item's first behaviour; int64 max when never

    @classmethod
    def load(cls, prepared_dir: Path, n_items: int) -> "_Logs":
        with np.load(prepared_dir / "sequences.npz") as sequences:
            offsets, items = sequences["offsets"].astype(np.int64), sequences["items"].astype(np.int64)
            times = sequences["times"].astype(np.int64)
        first_seen = np.full(n_items, np.iinfo(np.int64).max)
        np.minimum.at(first_seen, items, times)
        return cls(offsets, items, times, first_seen)

    def touched(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in `users`, item) of every behaviour of those users."""
        lengths = self.offsets[users + 1] - self.offsets[users]
        rows = np.repeat(np.arange(len(users)), lengths)
        place_in_history = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self.items[self.offsets[users][rows] + place_in_history]


def _population(prepared_dir: Path, logs: _Logs, ab, rng: np.random.Generator) -> tuple[Population, int]:
    """Test users (drawn down to `max_users`) whose candidate pool is large enough; and how many were not."""
    test = np.load(prepared_dir / "test.npy", mmap_mode="r")
    positives = np.asarray(test[test["label"] == 1])
    if positives.size == 0:
        raise ValueError(f"{prepared_dir / 'test.npy'} has no positive test sample: no user to run the test on")
    if ab.max_users and positives.size > ab.max_users:
        positives = positives[np.sort(rng.choice(positives.size, size=int(ab.max_users), replace=False))]
    users = positives["user"].astype(np.int64)
    time = logs.times[logs.offsets[users] + positives["pos"]]
    released = np.sort(logs.item_first_seen[RESERVED_ENTRIES:])
    pool = np.searchsorted(released, time, side="right") - (logs.offsets[users + 1] - logs.offsets[users])
    enough = pool >= ab.candidates - 1
    if not enough.any():
        raise ValueError(f"abtest.candidates ({ab.candidates}) is larger than every test user's candidate pool "
                         f"(at most {int(pool.max()) + 1} items: the held-out one and the untouched ones)")
    user_ids = np.asarray(json.loads((prepared_dir / "vocab.json").read_text())["users"])
    kept = positives[enough]
    return Population(user=users[enough], user_id=user_ids[users[enough]], position=kept["pos"].astype(np.int64),
                      held_out=kept["item"].astype(np.int64), time=time[enough]), int((~enough).sum())


def _draw_candidates(population: Population, logs: _Logs, request_user: np.ndarray, n_candidates: int,
                     rng: np.random.Generator) -> np.ndarray:
    """[R, n_candidates] the held-out item and uniformly drawn eligible ones, in random column order."""
    n_items = len(logs.item_first_seen)
    candidates = np.empty((len(request_user), n_candidates), dtype=np.int64)
    chunk = max(1, _CANDIDATE_CHUNK_ELEMENTS // n_items)
    for start in range(0, len(request_user), chunk):
        rows = request_user[start:start + chunk]
        eligible = logs.item_first_seen[None, :] <= population.time[rows][:, None]
        eligible[:, :RESERVED_ENTRIES] = False
        row, item = logs.touched(population.user[rows])
        eligible[row, item] = False
        keys = np.where(eligible, rng.random(eligible.shape), 2.0)  # 2 > any draw: ineligible items come last
        negatives = np.argpartition(keys, n_candidates - 2, axis=1)[:, :n_candidates - 1]
        candidates[start:start + len(rows)] = np.hstack([population.held_out[rows][:, None], negatives])
    return np.take_along_axis(candidates, rng.permuted(np.tile(np.arange(n_candidates), (len(candidates), 1)),
                                                       axis=1), axis=1)


def _unique_pairs(request_user: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (population row, item) pairs, sorted by user, and the pair of each [R, M] entry."""
    n_items = int(candidates.max()) + 1
    keys, inverse = np.unique(request_user[:, None] * n_items + candidates, return_inverse=True)
    return keys // n_items, keys % n_items, inverse.reshape(candidates.shape)


def _truth_probability(truth_path: Path, population: Population, prepared_dir: Path, logs: _Logs,
                       pair_user: np.ndarray, pair_item: np.ndarray) -> np.ndarray:
    """P(item is the user's next choice | the items they chose before) under the generator."""
    choice = load_choice_model(truth_path)
    asins = pq.read_table(prepared_dir / "items.parquet", columns=["asin"]).column("asin").to_numpy(
        zero_copy_only=False)
    truth_item = _rows_of(asins[RESERVED_ENTRIES:], choice.asin, "item", truth_path)
    truth_item = np.r_[np.full(RESERVED_ENTRIES, -1), truth_item]
    truth_user = _rows_of(population.user_id, choice.reviewer_id, "user", truth_path)
    probability = true_click_probability(choice, truth_user[pair_user], truth_item[pair_item],
                                         population.time[pair_user])
    row, seen = logs.touched(population.user)
    seen_mass = np.bincount(row, weights=true_click_probability(choice, truth_user[row], truth_item[seen],
                                                                population.time[row]), minlength=len(population.user))
    return np.clip(probability / np.maximum(1.0 - seen_mass[pair_user], 1e-12), 0.0, 1.0)


def _rows_of(keys: np.ndarray, ids: np.ndarray, what: str, truth_path: Path) -> np.ndarray:
    """Row of each ID string of the prepared data in the truth's ID array; fails on an ID the truth lacks."""
    order = np.argsort(ids)
    rows = order[np.clip(np.searchsorted(ids, keys, sorter=order), 0, len(ids) - 1)]
    unknown = ids[rows] != keys
    if unknown.any():
        raise ValueError(f"{what} {keys[unknown][0]!r} of the prepared data is not in {truth_path}: "
                         "the prepared data was not made from this synthetic truth")
    return rows


@torch.inference_mode()
def score_candidates(model, prepared_dir: Path, max_len: int, time_gap_buckets: int, users: np.ndarray,
                     positions: np.ndarray, items: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's logit of each (prepared user, history length, candidate item), in `CTRDataset` batches
    whose target is the candidate."""
    dataset = CTRDataset(prepared_dir, "test", max_len, time_gap_buckets)
    samples = np.zeros(len(users), dtype=SAMPLE_DTYPE)
    samples["user"], samples["pos"], samples["item"] = users, positions, items
    dataset.samples = samples  # the test sequences and item tables, with the candidates as the targets
    model.eval()
    logits = np.empty(len(users))
    for start in range(0, len(users), batch_size):
        stop = min(start + batch_size, len(users))
        logits[start:stop] = model(dataset.__getitems__(list(range(start, stop))))["logit"].double().numpy()
    return logits


def _item_prices(prepared_dir: Path) -> tuple[np.ndarray, int]:
    """Meta prices by item index, a missing one replaced by the median known price; and how many were missing."""
    price = pq.read_table(prepared_dir / "items.parquet", columns=["price"]).column("price").to_numpy(
        zero_copy_only=False).astype(np.float64)
    missing = ~np.isfinite(price[RESERVED_ENTRIES:])
    known = price[RESERVED_ENTRIES:][~missing]
    price[RESERVED_ENTRIES:][missing] = np.median(known) if known.size else 1.0
    return price, int(missing.sum())


@dataclass(frozen=True)
class Experiment:
    """Everything about the test that does not depend on the arms: users, requests and their truth."""

    population: Population
    requests: Requests
    pair_user: np.ndarray  # distinct (population row, item) pairs among the candidates, sorted by user
    pair_item: np.ndarray
    pair_of_entry: np.ndarray  # [R, M] the pair of each candidate
    relevance_report: dict
    users_skipped_small_pool: int
    prices_imputed: int


def _generators(seed: int, part: int, n: int) -> list[np.random.Generator]:
    """`n` generators for one part of the stage, so the draws of one part never shift another's."""
    return np.random.default_rng([seed, part]).spawn(n)


def build_experiment(cfg, prepared_dir: Path, raw_dir: Path) -> Experiment:
    """Users, their requests, the candidates with relevance and price; reads `abtest.*` and `data.max_len`."""
    ab = cfg.abtest
    prepared_dir = Path(prepared_dir)
    source = relevance_source(ab, Path(raw_dir), check_abtest_config(ab))
    population_rng, request_rng, candidate_rng, response_fit_rng = _generators(int(ab.seed), 0, 4)
    n_items = pq.read_metadata(prepared_dir / "items.parquet").num_rows
    if ab.candidates > n_items - RESERVED_ENTRIES:
        raise ValueError(f"abtest.candidates ({ab.candidates}) is larger than the catalogue "
                         f"({n_items - RESERVED_ENTRIES} items)")
    logs = _Logs.load(prepared_dir, n_items)
    population, users_skipped = _population(prepared_dir, logs, ab, population_rng)

    requests_per_user = 1 + request_rng.poisson(float(ab.requests_per_user) - 1, len(population.user))
    request_user = np.repeat(np.arange(len(population.user)), requests_per_user)
    request_day = request_rng.integers(0, int(ab.days), len(request_user))
    candidates = _draw_candidates(population, logs, request_user, int(ab.candidates), candidate_rng)
    pair_user, pair_item, pair_of_entry = _unique_pairs(request_user, candidates)

    if source == "truth":
        truth_path = fetched_files(Path(raw_dir))["truth"]
        probability = _truth_probability(truth_path, population, prepared_dir, logs, pair_user, pair_item)
        relevance_report = {"source": "truth", "note": TRUTH_NOTE}
    else:
        response = fit_response_model(prepared_dir, int(cfg.data.max_len), response_fit_rng)
        probability = response.choice_probability(population.user[pair_user], population.position[pair_user],
                                                  pair_item)
        relevance_report = {"source": "response", "note": BIAS_NOTE, "response_model": response.describe()}
    pair_relevance = 1.0 - (1.0 - np.minimum(probability, 1.0)) ** float(ab.relevance_draws)
    price, prices_imputed = _item_prices(prepared_dir)
    requests = Requests(user=request_user, day=request_day, candidates=candidates,
                        relevance=pair_relevance[pair_of_entry], price=price[candidates])
    return Experiment(population=population, requests=requests, pair_user=pair_user, pair_item=pair_item,
                      pair_of_entry=pair_of_entry, relevance_report=relevance_report,
                      users_skipped_small_pool=users_skipped, prices_imputed=prices_imputed)


def assign_users(ab, experiment: Experiment, arms: list[str]) -> np.ndarray:
    """Arm index of each user by the salted hash; fails when an arm gets fewer than 2 users."""
    shares = list(ab.traffic) or [1.0 / len(arms)] * len(arms)
    user_arm = assign_arms(experiment.population.user_id.tolist(), shares, str(ab.salt))
    for name, size in zip(arms, np.bincount(user_arm, minlength=len(arms))):
        if size < 2:
            raise ValueError(f"abtest: arm {name!r} got {size} of the {len(user_arm)} users; an arm needs at least 2 "
                             "(raise abtest.max_users, or change abtest.traffic or abtest.salt)")
    return user_arm


def score_arms(cfg, experiment: Experiment, user_arm: np.ndarray, arms: list[str], prepared_dir: Path,
               features_dir: Path, models_dir: Path, rng: np.random.Generator) -> np.ndarray:
    """[R, M] each request's candidates scored by the arm serving its user; a model scores only the
    distinct (user, item) pairs of its own users."""
    requests = experiment.requests
    scores = np.empty(requests.candidates.shape)
    request_arm = user_arm[requests.user]
    random_scores = rng.random(scores.shape)
    model_arms = [name for name in arms if name not in BUILTIN_ARMS]
    table = load_item_table(prepared_dir, features_dir) if model_arms else None
    if model_arms:
        ops.configure(cfg.ops)
    population = experiment.population
    for arm, name in enumerate(arms):
        rows = request_arm == arm
        if name == "oracle":
            scores[rows] = requests.relevance[rows]
        elif name == "random":
            scores[rows] = random_scores[rows]
        else:
            model = load_model(model_folder(models_dir, name) / "model.pt", name, table)
            needed = np.unique(experiment.pair_of_entry[rows])
            pair_logit = np.zeros(len(experiment.pair_user))
            pair_logit[needed] = score_candidates(
                model, prepared_dir, int(cfg.data.max_len), int(cfg.data.time_gap_buckets),
                population.user[experiment.pair_user[needed]], population.position[experiment.pair_user[needed]],
                experiment.pair_item[needed], int(cfg.abtest.batch_size))
            scores[rows] = pair_logit[experiment.pair_of_entry[rows]]
            log.info("abtest: %s scored %d (user, item) pairs", name, needed.size)
    return scores


def run_abtest(cfg, prepared_dir: Path, features_dir: Path, models_dir: Path, raw_dir: Path, out_path: Path,
               plot_path: Path) -> dict:
    """Simulate the A/B test of `cfg.abtest` and write its results; returns what `out_path` holds.

    Reads `abtest.*`, `data.max_len`, `data.time_gap_buckets` and `ops.backend`.
    """
    ab = cfg.abtest
    arms = check_abtest_config(ab)
    prepared_dir, features_dir, models_dir = Path(prepared_dir), Path(features_dir), Path(models_dir)
    for name in (name for name in arms if name not in BUILTIN_ARMS):
        path = model_folder(models_dir, name) / "model.pt"
        if not path.is_file():
            raise FileNotFoundError(f"abtest arm {name!r}: {path} not found; train it first (train.models)")
    experiment = build_experiment(cfg, prepared_dir, raw_dir)
    user_arm = assign_users(ab, experiment, arms)
    random_arm_rng, simulation_rng, bootstrap_rng = _generators(int(ab.seed), 1, 3)
    scores = score_arms(cfg, experiment, user_arm, arms, prepared_dir, features_dir, models_dir, random_arm_rng)
    requests = experiment.requests
    responses = simulate_responses(requests, scores, int(ab.slate_size), str(ab.click_model), float(ab.position_bias),
                                   float(ab.purchase_probability), simulation_rng)
    summary = compare_arms(responses, requests.user, user_arm, arms, float(ab.confidence), float(ab.power),
                           str(ab.interval), bootstrap_rng, int(ab.bootstrap_samples))
    daily = cumulative_daily_lifts(responses, requests, user_arm, arms, float(ab.confidence))

    report = {
        "simulation": SIMULATION_NOTE,
        "relevance": experiment.relevance_report,
        "control": arms[0],
        "treatments": arms[1:],
        "metrics": list(METRICS),
        "interval": f"{ab.interval}, {ab.confidence:.0%} two-sided; lift = treatment / control - 1",
        "users": int(len(experiment.population.user)),
        "users_skipped_small_pool": experiment.users_skipped_small_pool,
        "requests": int(len(requests)),
        "prices_imputed": experiment.prices_imputed,
        **summary,
    }
    out_path, plot_path = Path(out_path), Path(plot_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot_path.with_suffix(".json").write_text(json.dumps(daily, indent=1) + "\n")
    plot_cumulative_lift(daily, arms[0], float(ab.confidence), plot_path)
    return report


def plot_cumulative_lift(daily: list[dict], control: str, confidence: float, path: Path) -> None:
    """One panel per metric: each treatment's cumulative lift by day with its interval band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5.5 * len(METRICS), 4), squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        for arm in dict.fromkeys(r["arm"] for r in daily):
            rows = [r for r in daily if r["arm"] == arm and r["metric"] == metric and r["lift"] is not None]
            if not rows:
                continue
            day = [r["day"] for r in rows]
            line, = ax.plot(day, [100 * r["lift"] for r in rows], marker="o", markersize=3, label=arm)
            banded = [r for r in rows if r["ci_low"] is not None and r["ci_high"] is not None]
            ax.fill_between([r["day"] for r in banded], [100 * r["ci_low"] for r in banded],
                            [100 * r["ci_high"] for r in banded], color=line.get_color(), alpha=0.2)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set(xlabel="day of the simulated test", ylabel=f"cumulative lift vs {control} (%)",
               title=f"{metric} (band: {confidence:.0%} interval)")
        ax.legend()
    fig.suptitle("Simulated A/B test (offline simulation, not live traffic)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
