"""The one configuration: `params.yaml` composed through Hydra and checked against a typed schema.

Each stage owns one section (`data`, `features`, `ops`, `train`, ...). A section's dataclass is the
schema: a key missing from it, or a value of the wrong type, fails with the key's full name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARAMS_ENV = "MARN_PARAMS"


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


# Every valid `data.source`, with the `data.*` keys it cannot run without; marn.data.fetch has one fetcher each.
DATA_SOURCES: dict[str, tuple[str, ...]] = {
    "synthetic": (),
    "amazon2014": (),
    "amazon2018": (),
    "amazon2023": (),
    "files": ("reviews", "meta"),
    "interactions": ("interactions",),
}


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


@dataclass
class EvaluateConfig:
    out: str = "metrics/eval.json"
    plots_dir: str = "plots/evaluate"
    batch_size: int = 512
    test_negatives: int = 1  # sampled non-clicked items per test click for eq. 11; > 1 adds user_auc@<k>neg
    seed: int = 0  # draws the test negatives beyond the prepare stage's one


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


@dataclass
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    abtest: AbtestConfig = field(default_factory=AbtestConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)


# The params a model's training reads (flows/train_params.py writes their values per model for dvc.yaml's train
# stages); only models with an adversary (ADV, DDMA) read ADVERSARIAL_PARAMS, so train.lambda0 retrains just them.
TRAIN_PARAMS = (
    "data.max_len", "data.time_gap_buckets", "ops.backend", "train.seed", "train.epochs", "train.batch_size",
    "train.optimizer", "train.lr", "train.hidden", "train.embed_dim", "train.title_filters", "train.prediction_mlp",
    "train.freeze_word_vectors", "train.log_every", "train.checkpoint_every", "train.num_threads",
)
ADVERSARIAL_PARAMS = ("train.lambda0", "train.gamma")


class ConfigError(ValueError):
    """A params file or override that does not fit the schema."""


def params_path() -> Path:
    return Path(os.environ.get(PARAMS_ENV, PROJECT_ROOT / "params.yaml")).resolve()


def load_config(overrides: list[str] | None = None, path: str | Path | None = None) -> DictConfig:
    """Compose `params.yaml` with Hydra command-line style overrides and check it against `Params`.

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
    return validate(composed, source=str(path))


def validate(cfg: Any, source: str = "params") -> DictConfig:
    """Merge `cfg` onto the typed schema; unknown keys and wrong types name the offending key."""
    schema = OmegaConf.structured(Params)
    OmegaConf.set_struct(schema, True)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except ConfigKeyError as err:
        raise ConfigError(f"{source}: unknown key '{err.full_key}'") from err
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{source}: bad value for '{key}': {err.msg if hasattr(err, 'msg') else err}") from err
    OmegaConf.set_readonly(merged, True)
    problems = value_problems(merged)
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    return merged


def value_problems(cfg: DictConfig) -> list[str]:
    """Every value of `cfg` outside what its stage accepts (unknown names, ranges), as `key must be ..., got ...`.

    Run on every load, so a mistake fails every stage in its first second, whichever stage reads the key.
    Sections with a checker of their own (train sizes, abtest arms, data categories) reuse it.
    """
    from marn.abtest.stage import check_abtest_config
    from marn.data.fetch import amazon_urls
    from marn.features.images import IMAGE_ENCODERS
    from marn.models.registry import MODELS
    from marn.ops.backend import BACKENDS
    from marn.train import OPTIMIZERS, _check_train_config

    problems: list[str] = []

    def need(key: str, ok: bool, rule: str, value: Any) -> None:
        if not ok:
            problems.append(f"{key} must be {rule}, got {value!r}")

    def positive(section: Any, prefix: str, *keys: str) -> None:
        for key in keys:
            need(f"{prefix}.{key}", section[key] > 0, "> 0", section[key])

    def reuse(check: Callable[[], Any]) -> None:
        try:
            check()
        except ValueError as err:
            problems.append(str(err))

    data, syn, features, train = cfg.data, cfg.data.synthetic, cfg.features, cfg.train
    if data.source not in DATA_SOURCES:
        problems.append(f"data.source: unknown source {data.source!r}; valid sources: {', '.join(DATA_SOURCES)}")
    for key in DATA_SOURCES.get(data.source, ()):
        if not data[key]:
            problems.append(f"data.source={data.source} needs data.{key}: a local path or a file:// / http(s):// URL")
    if data.source.startswith("amazon") and data.source in DATA_SOURCES:
        reuse(lambda: amazon_urls(data.source, data.category, data.base_url))
    positive(data, "data", "max_len", "time_gap_buckets", "popularity_levels")
    need("data.stat_granularities", all(g >= 2 for g in data.stat_granularities), "bins of at least 2",
         list(data.stat_granularities))
    need("data.max_bad_line_share", 0 <= data.max_bad_line_share <= 1, "in [0, 1]", data.max_bad_line_share)
    positive(syn, "data.synthetic", "n_users", "n_items", "n_categories", "n_brands", "factor_levels", "image_size")
    need("data.synthetic.min_seq_len", 2 <= syn.min_seq_len <= syn.max_seq_len,
         f"in [2, data.synthetic.max_seq_len = {syn.max_seq_len}]", syn.min_seq_len)
    need("data.synthetic.cold_item_share", 0 <= syn.cold_item_share < 1, "in [0, 1)", syn.cold_item_share)

    need("features.device", features.device in ("cpu", "cuda") or features.device.startswith("cuda:"),
         "cpu, cuda or cuda:N", features.device)
    positive(features, "features", "batch_size", "image_size", "num_download_workers", "num_decode_workers",
             "download_timeout_s", "word_dim", "title_len")
    need("features.image_encoder", features.image_encoder in IMAGE_ENCODERS,
         f"one of {', '.join(IMAGE_ENCODERS)} (vgg16 = the paper's)", features.image_encoder)
    need("features.download_retries", features.download_retries >= 0, ">= 0", features.download_retries)
    positive(features.word2vec, "features.word2vec", "epochs", "window", "negatives", "min_count", "lr", "batch_size")

    need("ops.backend", cfg.ops.backend in BACKENDS, f"one of {', '.join(BACKENDS)}", cfg.ops.backend)

    need("train.models", len(train.models) > 0, "a non-empty list", list(train.models))
    for i, name in enumerate(train.models):
        need(f"train.models[{i}]", name in MODELS, f"a known model ({', '.join(MODELS)})", name)
    need("train.models", len(set(train.models)) == len(train.models), "free of repeats", list(train.models))
    for i, name in enumerate(train.seed_models):
        need(f"train.seed_models[{i}]", name in train.models, "one of train.models", name)
    if train.optimizer not in OPTIMIZERS:  # worded as marn.train.make_optimizer words it
        problems.append(f"train.optimizer {train.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    need("train.device", train.device in ("cpu", "cuda"), "cpu or cuda", train.device)
    reuse(lambda: _check_train_config(cfg))

    positive(cfg.evaluate, "evaluate", "batch_size", "test_negatives")
    reuse(lambda: check_abtest_config(cfg.abtest))
    analysis = cfg.analysis
    need("analysis.tsne_model", analysis.tsne_model in MODELS, "a known model", analysis.tsne_model)
    need("analysis.recall_at", all(k > 0 for k in analysis.recall_at), "positive cut-offs", list(analysis.recall_at))
    need("analysis.lambda0_grid", all(v >= 0 for v in analysis.lambda0_grid), "values >= 0",
         list(analysis.lambda0_grid))
    positive(analysis, "analysis", "tsne_items")
    for key in ("cold_start_queries", "cold_start_candidates"):
        need(f"analysis.{key}", analysis[key] >= 0, ">= 0 (0 = all)", analysis[key])
    return problems


def resolve_path(value: str | Path) -> Path:
    """Paths in params are relative to the project root (where `dvc repro` runs)."""
    p = Path(value)
    return p if p.is_absolute() else Path.cwd() / p
