"""The one configuration: `params.yaml` composed through Hydra, checked once, converted once to typed sections.

Each stage receives `Params` (whose sections are the dataclasses below, values already of their Python types) and
`Paths` (every folder and file a stage reads or writes, resolved once). A section's dataclass is its schema and
holds its own range checks (`problems`); a key missing from it, or a value of the wrong type, fails with the key's
full name. Names that only a registry knows (models, op backends, image encoders, Amazon categories) are checked by
`marn.pipeline.load_params`, the loader every entry point uses.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_ENV = "MARN_PARAMS"

# Every valid `data.source`, with the `data.*` keys it cannot run without; marn.data.fetch has one fetcher each.
DATA_SOURCES: dict[str, tuple[str, ...]] = {
    "synthetic": (),
    "amazon2014": (),
    "amazon2018": (),
    "amazon2023": (),
    "files": ("reviews", "meta"),
    "interactions": ("interactions",),
}
OPTIMIZERS = ("adagrad", "adam")
TRAIN_DEVICES = ("cpu", "cuda")
# the A/B simulation's choices (marn.abtest implements each)
BUILTIN_ARMS = ("oracle", "random")
RELEVANCE_SOURCES = ("auto", "truth", "response")
CLICK_MODELS = ("position", "cascade")
INTERVAL_METHODS = ("delta", "bootstrap")


class ConfigError(ValueError):
    """A params file or override that does not fit the schema."""


class _Problems(list):
    """The problems of one section, each worded `key must be ..., got ...`."""

    def need(self, key: str, ok: bool, rule: str, value: Any) -> None:
        if not ok:
            self.append(f"{key} must be {rule}, got {value!r}")

    def positive(self, section: Any, prefix: str, *keys: str) -> None:
        for key in keys:
            self.need(f"{prefix}.{key}", getattr(section, key) > 0, "> 0", getattr(section, key))


@dataclass
class SyntheticConfig:
    n_users: int = 1500
    n_items: int = 240
    n_categories: int = 6
    n_brands: int = 12
    shared_factors: int = 4
    image_factors: int = 3
    title_factors: int = 3
    min_seq_len: int = 5
    max_seq_len: int = 30
    factor_levels: int = 4
    active_factors: int = 3
    preference_strength: float = 2.5
    preference_drift: float = 0.3
    quality_weight: float = 0.5
    popularity_sigma: float = 1.0
    seq_len_exponent: float = 2.5
    cold_item_share: float = 0.15
    image_size: int = 64
    write_images: bool = True

    def problems(self, prefix: str = "data.synthetic") -> list[str]:
        """The generator's own limits (factor families, levels, items released before the test window) are
        checked by marn.data.synthetic.generator.check_config, which knows them."""
        found = _Problems()
        n_factors = self.shared_factors + self.image_factors + self.title_factors
        for key, ok, rule in (
            ("n_users", self.n_users >= 1, ">= 1"),
            ("n_items", self.n_items >= 2, ">= 2"),
            ("n_categories", self.n_categories >= 1, ">= 1"),
            ("n_brands", self.n_brands >= 1, ">= 1"),
            ("factor_levels", self.factor_levels >= 2, "at least 2"),
            ("active_factors", 0 <= self.active_factors <= n_factors, f"in [0, {n_factors}] (the number of factors)"),
            ("min_seq_len", 2 <= self.min_seq_len <= self.max_seq_len,
             f"in [2, {prefix}.max_seq_len = {self.max_seq_len}]"),
            ("cold_item_share", 0 <= self.cold_item_share < 1, "in [0, 1)"),
            ("image_size", self.image_size >= 8, ">= 8"),
            ("preference_drift", 0 <= self.preference_drift <= 1, "in [0, 1]"),
            ("preference_strength", self.preference_strength >= 0, ">= 0"),
            ("popularity_sigma", self.popularity_sigma >= 0, ">= 0"),
            ("seq_len_exponent", self.seq_len_exponent >= 0, ">= 0"),
        ):
            found.need(f"{prefix}.{key}", ok, rule, getattr(self, key))
        return found


@dataclass
class ColumnsConfig:
    """The column of each role in an interactions or item table; None: the usual names (marn.data.interactions)."""

    user: Optional[str] = None
    item: Optional[str] = None
    timestamp: Optional[str] = None
    rating: Optional[str] = None
    type: Optional[str] = None
    title: Optional[str] = None
    category: Optional[str] = None
    brand: Optional[str] = None
    image: Optional[str] = None


@dataclass
class DataConfig:
    source: str = "synthetic"
    category: str = "Electronics"
    reviews: Optional[str] = None
    meta: Optional[str] = None
    base_url: Optional[str] = None
    interactions: Optional[str] = None
    items: Optional[str] = None
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    min_interactions: int = 0
    raw_dir: str = "data/raw"
    prepared_dir: str = "data/prepared"
    max_len: int = 20
    seed: int = 42
    stat_granularities: list[int] = field(default_factory=lambda: [10, 100])
    time_gap_buckets: int = 12
    popularity_levels: int = 10
    max_bad_line_share: float = 0.5
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def problems(self) -> list[str]:
        found = _Problems()
        if self.source not in DATA_SOURCES:
            found.append(f"data.source: unknown source {self.source!r}; valid sources: {', '.join(DATA_SOURCES)}")
        for key in DATA_SOURCES.get(self.source, ()):
            if not getattr(self, key):
                found.append(f"data.source={self.source} needs data.{key}: a local path or a file:// / http(s):// URL")
        found.positive(self, "data", "max_len", "time_gap_buckets", "popularity_levels")
        found.need("data.stat_granularities", all(g >= 2 for g in self.stat_granularities), "bins of at least 2",
                   self.stat_granularities)
        found.need("data.max_bad_line_share", 0 <= self.max_bad_line_share <= 1, "in [0, 1]", self.max_bad_line_share)
        return found + self.synthetic.problems()


@dataclass
class Word2VecConfig:
    epochs: int = 5
    window: int = 5
    negatives: int = 5
    min_count: int = 2
    lr: float = 0.01
    batch_size: int = 1024


@dataclass
class FeaturesConfig:
    dir: str = "data/features"
    device: str = "cpu"
    batch_size: int = 16
    image_size: int = 224
    num_download_workers: int = 8
    num_decode_workers: int = 4
    download_timeout_s: float = 30.0
    download_retries: int = 3
    image_cache_dir: str = "data/cache/images"
    vectors_cache_dir: str = "data/cache/vectors"
    image_encoder: str = "vgg16"  # vgg16 (the paper's fc7) | thumbnail (not the paper's; marn.features.images)
    vgg16_weights: Optional[str] = None
    vgg16_weights_sha256: Optional[str] = None
    allow_random_weights: bool = True
    word_vectors: str = "word2vec"
    word_dim: int = 300
    title_len: int = 20
    seed: int = 0
    word2vec: Word2VecConfig = field(default_factory=Word2VecConfig)

    def problems(self) -> list[str]:
        found = _Problems()
        found.need("features.device", self.device in ("cpu", "cuda") or self.device.startswith("cuda:"),
                   "cpu, cuda or cuda:N", self.device)
        found.positive(self, "features", "batch_size", "image_size", "num_download_workers", "num_decode_workers",
                       "download_timeout_s", "word_dim", "title_len")
        found.need("features.download_retries", self.download_retries >= 0, ">= 0", self.download_retries)
        found.positive(self.word2vec, "features.word2vec", "epochs", "window", "negatives", "min_count", "lr",
                       "batch_size")
        return found


@dataclass
class OpsConfig:
    backend: str = "auto"


@dataclass
class TrainConfig:
    models: list[str] = field(default_factory=lambda: ["BaseModel+IDs", "MARN"])
    out_dir: str = "models"
    seed: int = 1
    epochs: int = 2
    batch_size: int = 32
    optimizer: str = "adagrad"
    lr: float = 0.1
    lambda0: float = 0.05
    gamma: float = 10.0
    hidden: int = 256
    embed_dim: int = 64
    title_filters: int = 64
    prediction_mlp: list[int] = field(default_factory=lambda: [128, 64])
    freeze_word_vectors: bool = True
    log_every: int = 20
    checkpoint_every: int = 200
    num_threads: int = 1
    nproc: int = 1
    device: str = "cpu"
    seeds: list[int] = field(default_factory=list)
    seed_models: list[str] = field(default_factory=lambda: ["BaseModel+IDs", "MARN"])
    params_dir: str = "data/train_params"

    def problems(self) -> list[str]:
        found = _Problems()
        for key in ("epochs", "batch_size", "log_every", "checkpoint_every", "hidden", "embed_dim", "title_filters",
                    "nproc"):
            if getattr(self, key) < 1:
                found.append(f"train.{key} must be at least 1, got {getattr(self, key)}")
        if not self.lr > 0:
            found.append(f"train.lr must be positive, got {self.lr}")
        if self.num_threads < 0:
            found.append(f"train.num_threads must be 0 (torch's default) or more, got {self.num_threads}")
        if self.optimizer not in OPTIMIZERS:
            found.append(f"train.optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        found.need("train.device", self.device in TRAIN_DEVICES, "cpu or cuda", self.device)
        found.need("train.models", len(self.models) > 0, "a non-empty list", self.models)
        found.need("train.models", len(set(self.models)) == len(self.models), "free of repeats", self.models)
        for i, name in enumerate(self.seed_models):
            found.need(f"train.seed_models[{i}]", name in self.models, "one of train.models", name)
        return found


@dataclass
class EvaluateConfig:
    out: str = "metrics/eval.json"
    plots_dir: str = "plots/evaluate"
    batch_size: int = 512
    test_negatives: int = 1  # sampled non-clicked items per test click for eq. 11; > 1 adds user_auc@<k>neg
    seed: int = 0  # draws the test negatives beyond the prepare stage's one

    def problems(self) -> list[str]:
        found = _Problems()
        found.positive(self, "evaluate", "batch_size", "test_negatives")
        return found


@dataclass
class AbtestConfig:
    control: str = "BaseModel+IDs"
    treatments: list[str] = field(default_factory=lambda: ["MARN"])
    traffic: list[float] = field(default_factory=list)
    salt: str = "marn-abtest-1"
    seed: int = 7
    max_users: int = 2000
    days: int = 14
    requests_per_user: float = 10.0
    candidates: int = 20
    slate_size: int = 5
    click_model: str = "position"
    position_bias: float = 1.0
    relevance: str = "auto"
    relevance_draws: float = 10.0
    purchase_probability: float = 0.1
    interval: str = "delta"
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    power: float = 0.8
    batch_size: int = 512
    out: str = "metrics/abtest.json"
    plot: str = "plots/abtest_lift.png"
    daily: str = "plots/abtest_lift.json"

    @property
    def arms(self) -> list[str]:
        """The arm names, control first."""
        return [self.control, *self.treatments]

    def problems(self) -> list[str]:
        """Checks of the experiment's shape; the arm names are checked against the model registry on load."""
        arms = self.arms
        found = _Problems()
        if not self.treatments:
            found.append("abtest.treatments is empty: name at least one model or built-in arm to test")
        duplicated = sorted({n for n in arms if arms.count(n) > 1})
        if duplicated:
            found.append(f"abtest: arm {duplicated[0]!r} is listed more than once (control and treatments)")
        if self.traffic and len(self.traffic) != len(arms):
            found.append(f"abtest.traffic has {len(self.traffic)} shares for {len(arms)} arms ({', '.join(arms)})")
        for i, share in enumerate(self.traffic):
            if not share > 0:
                found.append(f"abtest.traffic[{i}] ({arms[i] if i < len(arms) else '?'}) must be > 0, got {share}: "
                             "an arm needs users")
        if self.traffic and not math.isclose(sum(self.traffic), 1.0, rel_tol=1e-5, abs_tol=1e-8):
            found.append(f"abtest.traffic must sum to 1, got {sum(self.traffic)}")
        for key, ok, rule in (
            ("candidates", self.candidates >= 2, ">= 2"),
            ("slate_size", self.slate_size >= 1, ">= 1"),
            ("days", self.days >= 1, ">= 1"),
            ("requests_per_user", self.requests_per_user >= 1, ">= 1"),
            ("max_users", self.max_users >= 0, ">= 0 (0 = all test users)"),
            ("click_model", self.click_model in CLICK_MODELS, f"one of {', '.join(CLICK_MODELS)}"),
            ("position_bias", self.position_bias >= 0, ">= 0"),
            ("relevance", self.relevance in RELEVANCE_SOURCES, f"one of {', '.join(RELEVANCE_SOURCES)}"),
            ("relevance_draws", self.relevance_draws > 0, "> 0"),
            ("purchase_probability", 0 <= self.purchase_probability <= 1, "in [0, 1]"),
            ("interval", self.interval in INTERVAL_METHODS, f"one of {', '.join(INTERVAL_METHODS)}"),
            ("bootstrap_samples", self.bootstrap_samples >= 100, ">= 100"),
            ("confidence", 0 < self.confidence < 1, "in (0, 1)"),
            ("power", 0 < self.power < 1, "in (0, 1)"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
        ):
            found.need(f"abtest.{key}", ok, rule, getattr(self, key))
        if self.slate_size > self.candidates:
            found.append(f"abtest.slate_size ({self.slate_size}) is larger than the candidate pool of a request "
                         f"(abtest.candidates = {self.candidates})")
        return found


@dataclass
class AnalysisConfig:
    out_dir: str = "reports/default"
    seed: int = 0
    lambda0_grid: list[float] = field(default_factory=list)
    recall_at: list[int] = field(default_factory=lambda: [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 1000])
    cold_start_queries: int = 100
    cold_start_candidates: int = 1000
    tsne_model: str = "MARN"
    tsne_items: int = 100
    paper_numbers: Optional[str] = None

    def problems(self) -> list[str]:
        found = _Problems()
        found.need("analysis.recall_at", all(k > 0 for k in self.recall_at), "positive cut-offs", self.recall_at)
        found.need("analysis.lambda0_grid", all(v >= 0 for v in self.lambda0_grid), "values >= 0",
                   self.lambda0_grid)
        found.positive(self, "analysis", "tsne_items")
        for key in ("cold_start_queries", "cold_start_candidates"):
            found.need(f"analysis.{key}", getattr(self, key) >= 0, ">= 0 (0 = all)", getattr(self, key))
        return found


@dataclass
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    abtest: AbtestConfig = field(default_factory=AbtestConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def problems(self) -> list[str]:
        """Every value outside what its section accepts, as `key must be ..., got ...`."""
        return [problem for section in (self.data, self.features, self.train, self.evaluate, self.abtest,
                                        self.analysis) for problem in section.problems()]


@dataclass(frozen=True)
class Paths:
    """Every folder and file the stages read or write, resolved once against the project root (where `dvc repro`
    runs); the config keys they come from are `PATH_KEYS`, which no stage reads itself."""

    raw: Path
    prepared: Path
    features: Path
    image_cache: Path
    vectors_cache: Path
    models: Path
    train_params: Path
    eval_out: Path
    eval_plots: Path
    abtest_out: Path
    abtest_plot: Path
    abtest_daily: Path
    report: Path

    @classmethod
    def from_params(cls, params: Params, root: str | Path | None = None) -> "Paths":
        base = Path.cwd() if root is None else Path(root)
        values = {name: _select(params, key) for name, key in PATH_KEYS.items()}
        return cls(**{name: Path(value) if Path(value).is_absolute() else base / value
                      for name, value in values.items()})


PATH_KEYS = {
    "raw": "data.raw_dir", "prepared": "data.prepared_dir", "features": "features.dir",
    "image_cache": "features.image_cache_dir", "vectors_cache": "features.vectors_cache_dir",
    "models": "train.out_dir", "train_params": "train.params_dir", "eval_out": "evaluate.out",
    "eval_plots": "evaluate.plots_dir", "abtest_out": "abtest.out", "abtest_plot": "abtest.plot",
    "abtest_daily": "abtest.daily", "report": "analysis.out_dir",
}


def _select(params: Params, dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def params_path() -> Path:
    return Path(os.environ.get(PARAMS_ENV, PROJECT_ROOT / "params.yaml")).resolve()


def load_config(overrides: list[str] | None = None, path: str | Path | None = None,
                more_checks: Callable[[Params], list[str]] | None = None) -> Params:
    """Compose `params.yaml` (or `$MARN_PARAMS`) with Hydra command-line style overrides into checked `Params`;
    `more_checks` adds problems of its own to the one error message.

    Hydra's compose API is used (not `@hydra.main`), so no `outputs/` or `.hydra/` folder is written.
    """
    from hydra import compose, initialize_config_dir

    path = Path(path).resolve() if path is not None else params_path()
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        with initialize_config_dir(config_dir=str(path.parent), version_base=None):
            composed = compose(config_name=path.stem, overrides=list(overrides or []))
    except Exception as err:  # Hydra wraps override syntax errors in several exception types
        raise ConfigError(f"{path}: cannot apply overrides {list(overrides or [])}: {err}") from err
    return validate(composed, source=str(path), more_checks=more_checks)


def validate(values: Any, source: str = "params", more_checks: Callable[[Params], list[str]] | None = None) -> Params:
    """`values` (a mapping or DictConfig, sections and keys as in params.yaml, any subset) over the defaults, as
    checked `Params`: an unknown key, a value of the wrong type or out of range names the offending key."""
    schema = OmegaConf.structured(Params)
    OmegaConf.set_struct(schema, True)
    try:
        merged = OmegaConf.merge(schema, values)
    except ConfigKeyError as err:
        raise ConfigError(f"{source}: unknown key '{err.full_key}'") from err
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{source}: bad value for '{key}': {err.msg if hasattr(err, 'msg') else err}") from err
    params: Params = OmegaConf.to_object(merged)
    # names first: an unknown model name is the cause of the problems that follow it (train.seed_models ...)
    problems = (more_checks(params) if more_checks is not None else []) + params.problems()
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    return params


def write_params(params: Params, path: str | Path) -> Path:
    """`params` as a params file that `load_config(path=...)` reads back to equal `Params`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.structured(params), path)
    return path


def section_keys(section: Any, prefix: str) -> list[str]:
    """The dotted keys of every leaf of a section (nested sections expanded), e.g. for `data.synthetic`."""
    keys = []
    for f in fields(section):
        value = getattr(section, f.name)
        keys += section_keys(value, f"{prefix}.{f.name}") if hasattr(value, "__dataclass_fields__") else \
            [f"{prefix}.{f.name}"]
    return keys
