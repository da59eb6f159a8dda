"""VGG16 fc7 image features, one float16 row of 4096 per item, written resumably.

Each item's `image_ref` is a local path, a file:// URL or an http(s) URL; URLs are downloaded on a
bounded pool into a cache folder first. An image that is missing, cannot be fetched or cannot be decoded
leaves its row zero, its mask false and its reason counted; the run goes on.

Rows are computed in fixed batches (rows [k*B, (k+1)*B)) into a preallocated memory-mapped `.npy`, and a
small progress file records how many rows are done, so a killed run continues where it stopped and
ends with the same bytes an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image
from tqdm.auto import tqdm

from marn.config import FeaturesConfig
from marn.data.download import DownloadError, download, download_many
from marn.data.formats import IMAGE_FILE, IMAGE_MASK_FILE, write_npy
from marn.files import atomic_write_text, file_sha256
from marn.items import RESERVED_ENTRIES

log = logging.getLogger(__name__)

IMAGE_FEATURE_DIM = 4096
IMAGENET_WEIGHTS = "IMAGENET1K_V1"
# The outcome of each row; stored as int8 codes while a run is in progress so a resumed run can report them.
ROW_STATUSES = (
    "pending", "ok", "reserved", "no_image_ref", "missing_file", "corrupt",
    # download failures, named as marn.data.download names them; "download_error" for any other reason
    "not_found", "forbidden", "http_error", "timeout", "connection_error", "truncated",
    "size_mismatch", "checksum_mismatch", "bad_url", "download_error",
)
STATUS_CODE = {status: code for code, status in enumerate(ROW_STATUSES)}
EXAMPLES_PER_REASON = 5
_TORCHVISION_HASH_SUFFIX = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")
_IMAGE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}$")


class WeightsError(RuntimeError):
    """VGG16 weights that are unavailable, fail their hash check or do not fit the model."""


class RandomWeightsWarning(UserWarning):
    """The image features come from an untrained VGG16: fine for synthetic data, meaningless for real images."""


@dataclass(frozen=True)
class ImageLocation:
    path: Path  # where the image file is, or will be once downloaded
    url: str | None = None  # the http(s) URL it is downloaded from, None for local files


@dataclass(frozen=True)
class Fc7Weights:
    """Which weights the model carries, as the report records them."""

    kind: str  # "imagenet", "file", "random", "thumbnail" (no weights), or "none" when no item has an image
    source: str  # URL, file path as features.vgg16_weights gives it, or "seed N" for random weights
    sha256: str | None  # of the weights file; None for random weights

    @property
    def identity(self) -> str:
        return self.sha256 or f"{self.kind}:{self.source}"  # "random:seed N" or "none:..."


# --- where the images are ----------------------------------------------------------------------------


def locate_image(ref: str, cache_dir: Path, raw_dir: Path | None = None) -> ImageLocation | None:
    """Where the image of an `image_ref` lives; None for an empty reference.

    http(s) images are cached as `cache_dir/<sha256 of the URL>.<suffix>`, so each URL is fetched once;
    a relative path is taken from `raw_dir` (or the working folder when none is given).
    """
    ref = ref.strip()
    if not ref:
        return None
    parsed = urllib.parse.urlsplit(ref)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        suffix_match = _IMAGE_SUFFIX.search(parsed.path)
        name = hashlib.sha256(ref.encode()).hexdigest()[:32] + (suffix_match.group(0).lower() if suffix_match else "")
        return ImageLocation(Path(cache_dir) / name, ref)
    if scheme == "file":
        return ImageLocation(Path(urllib.request.url2pathname(parsed.path)))
    path = Path(ref)
    if not path.is_absolute() and raw_dir is not None:
        path = Path(raw_dir) / path
    return ImageLocation(path)


def fetch_remote_images(
    locations: dict[int, ImageLocation], *, workers: int, timeout: float, retries: int
) -> dict[int, str]:
    """Download the http(s) images among `locations` (already cached ones are kept); returns the
    failure reason of each row whose download failed. Items sharing a URL share one download."""
    remote = sorted({location for location in locations.values() if location.url is not None}, key=str)
    if not remote:
        return {}
    results = download_many(
        [(location.url, location.path) for location in remote], workers=workers, timeout=timeout, retries=retries
    )
    failed = {
        location: result.error if result.error in STATUS_CODE else "download_error"
        for location, result in zip(remote, results, strict=True)
        if not result.ok
    }
    return {row: failed[location] for row, location in locations.items() if location in failed}


def read_rgb(path: Path) -> Image.Image | None:
    """The image decoded to RGB, or None when the file is not a readable image (truncated, not an image)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


# --- the model -----------------------------------------------------------------------------------------


def imagenet_transform(image_size: int = 224):
    """ImageNet preprocessing for VGG16: resize the short side to image_size*256/224 (256 for 224),
    center-crop `image_size`, scale to [0, 1], normalize with ImageNet's mean and std."""
    from torchvision.models import VGG16_Weights

    resize_size = round(image_size * 256 / 224)
    return VGG16_Weights[IMAGENET_WEIGHTS].transforms(crop_size=image_size, resize_size=resize_size)


def vgg16_fc7(state_dict: dict | None, seed: int) -> torch.nn.Module:
    """torchvision's VGG16 cut after fc7 + ReLU (the paper drops the last two layers: dropout and fc8),
    in eval mode. `state_dict=None` gives seeded random weights."""
    from torchvision.models import vgg16

    if state_dict is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = vgg16(weights=None)
    else:
        # Built on the meta device, so the weights are not first initialised randomly only to be replaced.
        with torch.device("meta"):
            model = vgg16(weights=None)
        model.load_state_dict(state_dict, assign=True)
    model.classifier = model.classifier[:5]  # fc6, ReLU, Dropout, fc7, ReLU
    return model.eval()


def load_vgg16_weights(features: FeaturesConfig, *, timeout: float = 60, retries: int = 3
                       ) -> tuple[dict | None, Fc7Weights]:
    """The state dict to use and what it is, by `features` settings:

    1. `vgg16_weights` (path or URL): loaded after its sha256 matches `vgg16_weights_sha256`, or the hash
       prefix in a torchvision-style name (vgg16-397923af.pth);
    2. otherwise torchvision's ImageNet weights, downloaded into torch's hub cache and hash-checked;
    3. when that download fails: random weights (None) with a loud warning, only where
       `allow_random_weights` is true; else a `WeightsError`.
    """
    if features.vgg16_weights:
        path = _fetch_weights_file(features.vgg16_weights, timeout=timeout, retries=retries)
        sha256 = _checked_sha256(path, features.vgg16_weights_sha256)
        return _load_state_dict(path), Fc7Weights("file", features.vgg16_weights, sha256)  # as the user named it

    from torchvision.models import VGG16_Weights

    url = VGG16_Weights[IMAGENET_WEIGHTS].url
    dest = Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlsplit(url).path).name
    try:
        download(url, dest, timeout=timeout, retries=retries)
    except DownloadError as err:
        if not features.allow_random_weights:
            raise WeightsError(
                f"torchvision's ImageNet VGG16 weights could not be downloaded ({err}); put a copy of "
                f"{dest.name} somewhere and set features.vgg16_weights to it, or set "
                "features.allow_random_weights: true (for synthetic data only)"
            ) from err
        message = (
            f"VGG16 RUNS ON RANDOM WEIGHTS (seed {features.seed}): the ImageNet weights could not be downloaded "
            f"({err}). The image features carry no ImageNet knowledge; the report says weights: random."
        )
        log.warning("!" * 100 + "\n%s\n" + "!" * 100, message)
        warnings.warn(message, RandomWeightsWarning, stacklevel=2)
        return None, Fc7Weights("random", f"seed {features.seed}", None)
    sha256 = _checked_sha256(dest, None)
    return _load_state_dict(dest), Fc7Weights("imagenet", url, sha256)


def _fetch_weights_file(spec: str, *, timeout: float, retries: int) -> Path:
    parsed = urllib.parse.urlsplit(spec)
    if parsed.scheme in ("http", "https"):
        dest = Path(torch.hub.get_dir()) / "checkpoints" / (Path(parsed.path).name or "vgg16.pth")
        return download(spec, dest, timeout=timeout, retries=retries)
    path = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(spec)
    if not path.is_file():
        raise WeightsError(f"features.vgg16_weights: no such file {path}")
    return path


def _checked_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256, after checking it against `expected` or the torchvision-style name's hash prefix."""
    actual = file_sha256(path)
    if expected:
        if actual != expected.strip().lower():
            raise WeightsError(f"{path}: sha256 is {actual}, but features.vgg16_weights_sha256 is {expected}")
        return actual
    name_hash = _TORCHVISION_HASH_SUFFIX.search(path.name)
    if name_hash is None:
        raise WeightsError(
            f"{path}: no hash to check it against; set features.vgg16_weights_sha256: {actual} to accept this file"
        )
    if not actual.startswith(name_hash.group(1)):
        raise WeightsError(
            f"{path}: sha256 is {actual}, which does not start with {name_hash.group(1)} as its name says"
        )
    return actual


def _load_state_dict(path: Path) -> dict:
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises several types for a file that is not a safe state dict
        raise WeightsError(f"{path}: not a loadable state dict ({type(err).__name__}: {err})") from err
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{path}: holds a {type(state_dict).__name__}, not a state dict")
    return state_dict


# --- the thumbnail encoder: NOT the paper's (which is VGG16 fc7); a generic, factor-agnostic alternative -----

THUMBNAIL_DECODE = 64  # images are resized (whole, no crop) to this square before encoding
THUMBNAIL_GRID = 32  # RGB grid of the thumbnail part: 32 * 32 * 3 = 3072 values
HISTOGRAM_BINS = (16, 8, 8)  # hue, saturation, value: 1024 bins, so a row has IMAGE_FEATURE_DIM values too
THUMBNAIL_WEIGHTS = Fc7Weights("thumbnail", "no weights: RGB thumbnail + HSV histogram", None)
IMAGE_ENCODERS = ("vgg16", "thumbnail")


def thumbnail_transform():
    """The whole image resized to THUMBNAIL_DECODE pixels square, as 6 channels: RGB then HSV, in [0, 1]."""
    def transform(image: Image.Image) -> torch.Tensor:
        small = image.resize((THUMBNAIL_DECODE, THUMBNAIL_DECODE), Image.Resampling.BILINEAR)
        channels = np.concatenate([np.asarray(small), np.asarray(small.convert("HSV"))], axis=2)
        return torch.from_numpy(channels).permute(2, 0, 1).float() / 255.0
    return transform


class ThumbnailEncoder(torch.nn.Module):
    """A 4096-d image row with no learned weights: the RGB image average-pooled to a 32 x 32 grid and
    normalized by ImageNet's channel mean and std (3072 values), then the joint HSV histogram (1024 bins)
    as square roots of pixel shares times 32, so both parts have a mean square of about 1 per value."""

    def __init__(self):
        super().__init__()
        preset = imagenet_transform(THUMBNAIL_GRID)  # for its channel mean and std only
        self.register_buffer("mean", torch.tensor(preset.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preset.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("bins", torch.tensor(HISTOGRAM_BINS), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb, hsv = images[:, :3], images[:, 3:]
        grid = torch.nn.functional.adaptive_avg_pool2d(rgb, THUMBNAIL_GRID)
        thumbnail = ((grid - self.mean) / self.std).flatten(1)
        level = (hsv * self.bins.view(1, 3, 1, 1)).long().clamp(max=self.bins.view(1, 3, 1, 1) - 1)
        cell = (level[:, 0] * self.bins[1] + level[:, 1]) * self.bins[2] + level[:, 2]
        n_bins = int(self.bins.prod())
        counts = torch.zeros(images.shape[0], n_bins, device=images.device)
        counts.scatter_add_(1, cell.flatten(1), torch.ones_like(cell.flatten(1), dtype=counts.dtype))
        histogram = (counts / cell[0].numel()).sqrt() * n_bins ** 0.5
        return torch.cat([thumbnail, histogram], dim=1)


def fc7_model(features: FeaturesConfig, *, timeout: float = 60, retries: int = 3
              ) -> tuple[torch.nn.Module, Fc7Weights]:
    """VGG16 up to fc7 with the weights `features` asks for (see `load_vgg16_weights`)."""
    state_dict, weights = load_vgg16_weights(features, timeout=timeout, retries=retries)
    try:
        return vgg16_fc7(state_dict, features.seed), weights
    except RuntimeError as err:
        raise WeightsError(f"{weights.source}: does not fit torchvision's vgg16: {err}") from err


def torch_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"features.device: {name!r} is not a device (cpu, cuda, cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"features.device is {name!r} but torch sees no CUDA device here")
    return device


# --- the resumable extraction ----------------------------------------------------------------------------


def extract_image_features(
    image_refs: Sequence[str],
    out_dir: Path,
    model: torch.nn.Module | None,
    weights: Fc7Weights,
    features: FeaturesConfig,
    *,
    raw_dir: Path | None = None,
    image_cache_dir: Path,
) -> dict:
    """Write `image.npy` (float16 [N, 4096], row = item index) and `image_mask.npy` (bool [N]) into `out_dir`.

    Rows 0 and 1 are the reserved items. Returns the image part of the report.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_rows = len(image_refs)
    device = torch_device(features.device)
    if features.batch_size < 1:
        raise ValueError(f"features.batch_size must be at least 1, got {features.batch_size}")

    planned, locations = plan_rows(image_refs, image_cache_dir, raw_dir)
    fingerprint = _fingerprint(image_refs, weights, features, device)
    work = _WorkFiles(out_dir)
    image_rows, status, start = work.open(fingerprint, n_rows)
    if start:
        log.info("image features: resuming at row %d of %d", start, n_rows)
    for row, reason in fetch_remote_images(
        {row: location for row, location in locations.items() if row >= start},
        workers=features.num_download_workers, timeout=features.download_timeout_s,
        retries=features.download_retries,
    ).items():
        planned[row] = reason
    status[start:] = [STATUS_CODE[s] for s in planned[start:]]

    transform = thumbnail_transform() if weights.kind == "thumbnail" else imagenet_transform(features.image_size)
    encoder_name = "thumbnail" if weights.kind == "thumbnail" else "vgg16 fc7"
    model = model.to(device) if model is not None else None  # None: no row has an image to compute
    pending = np.array([s == "pending" for s in planned])
    bar = tqdm(total=int(pending.sum()), initial=int(pending[:start].sum()), desc=encoder_name, unit="img")
    loop_started = time.perf_counter()
    images_done = _encode_rows(
        model, device, transform, locations, pending, start, features.batch_size, features.num_decode_workers,
        image_rows, status, partial(work.commit, image_rows, status, fingerprint), bar,
    )
    bar.close()
    loop_seconds = time.perf_counter() - loop_started
    statuses = [ROW_STATUSES[code] for code in status]
    work.finish(image_rows, status)
    del image_rows, status

    return {
        "items": max(n_rows - RESERVED_ENTRIES, 0),
        "images_ok": statuses.count("ok"),
        **_failures(image_refs, statuses),
        "image_encoder": {"thumbnail": "thumbnail (not the paper's)", "none": "none"}.get(weights.kind, encoder_name),
        "weights": weights.kind,
        "weights_source": weights.source,
        "weights_sha256": weights.sha256,
        "device": str(device),
        "image_size": features.image_size,
        "resumed_at_row": start,
        "images_computed": images_done,
        "images_per_second": round(images_done / loop_seconds, 2) if images_done and loop_seconds > 0 else None,
        "image_seconds": round(time.perf_counter() - started, 2),
    }


def plan_rows(image_refs: Sequence[str], image_cache_dir: Path,
              raw_dir: Path | None) -> tuple[list[str], dict[int, ImageLocation]]:
    """Each row's status before any image is read ("reserved", "no_image_ref" or "pending"), and where the
    image of each pending row is."""
    locations: dict[int, ImageLocation] = {}
    planned = ["reserved"] * min(RESERVED_ENTRIES, len(image_refs))
    for row in range(RESERVED_ENTRIES, len(image_refs)):
        location = locate_image(image_refs[row], image_cache_dir, raw_dir)
        planned.append("no_image_ref" if location is None else "pending")
        if location is not None:
            locations[row] = location
    return planned, locations


def _load_image(location: ImageLocation, transform) -> torch.Tensor | str:
    """The preprocessed image at `location`, or why there is none."""
    if not location.path.is_file():
        return "missing_file"
    image = read_rgb(location.path)
    return "corrupt" if image is None else transform(image)


def _encode_rows(model: torch.nn.Module | None, device: torch.device, transform, locations: dict[int, ImageLocation],
                 pending: np.ndarray, start: int, batch_size: int, decode_workers: int, image_rows: np.memmap,
                 status: np.memmap, commit, bar) -> int:
    """Encode the pending rows from `start` on in fixed batches, committing after each; returns how many images
    were encoded. Images are decoded on a thread pool (PIL releases the GIL), one batch ahead of the model."""
    n_rows = len(pending)
    batches = [range(b, min(b + batch_size, n_rows)) for b in range(start, n_rows, batch_size)]
    images_done = 0
    with torch.inference_mode(), ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool:
        def submit(rows: range) -> list[tuple[int, Future]]:
            return [(row, pool.submit(_load_image, locations[row], transform)) for row in rows if pending[row]]

        upcoming = submit(batches[0]) if batches else []
        for batch_no, rows in enumerate(batches):
            loading = upcoming
            upcoming = submit(batches[batch_no + 1]) if batch_no + 1 < len(batches) else []
            batch_rows, batch_images = [], []
            for row, job in loading:
                image = job.result()
                if isinstance(image, str):
                    status[row] = STATUS_CODE[image]
                else:
                    batch_rows.append(row)
                    batch_images.append(image)
            if batch_images:
                image_rows[batch_rows] = _encode_batch(model, device, batch_images, batch_rows)
                status[batch_rows] = STATUS_CODE["ok"]
            commit(rows.stop)
            images_done += len(batch_images)
            bar.update(int(pending[rows.start: rows.stop].sum()))
    return images_done


def _encode_batch(model: torch.nn.Module, device: torch.device, images: list[torch.Tensor],
                  rows: list[int]) -> np.ndarray:
    """float16 feature rows of `images` (the item rows `rows`); a value float16 cannot hold is an error."""
    encoded = model(torch.stack(images).to(device)).to("cpu", torch.float16)
    if not torch.isfinite(encoded).all():
        bad = [rows[i] for i in torch.nonzero(~torch.isfinite(encoded).all(1)).flatten().tolist()]
        raise FloatingPointError(f"fc7 features of item rows {bad} do not fit float16")
    return encoded.numpy()


def _failures(image_refs: Sequence[str], statuses: list[str]) -> dict:
    """Rows without an image feature, counted by reason, with a few examples of each."""
    failures: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for row in range(RESERVED_ENTRIES, len(statuses)):
        if statuses[row] != "ok":
            failures[statuses[row]] = failures.get(statuses[row], 0) + 1
            if len(examples.setdefault(statuses[row], [])) < EXAMPLES_PER_REASON:
                examples[statuses[row]].append(f"item {row}: {image_refs[row]!r}")
    return {"image_failures": dict(sorted(failures.items())), "image_failure_examples": dict(sorted(examples.items()))}


def _fingerprint(image_refs: Sequence[str], weights: Fc7Weights, features: FeaturesConfig,
                 device: torch.device) -> str:
    """What the rows depend on: a resumed run continues only a run that had the same."""
    import torchvision

    digest = hashlib.sha256()
    for ref in image_refs:
        digest.update(ref.encode() + b"\n")
    digest.update(json.dumps({
        "weights": weights.identity, "image_size": features.image_size, "batch_size": features.batch_size,
        "device": device.type, "torch": torch.__version__, "torchvision": torchvision.__version__,
    }, sort_keys=True).encode())
    return digest.hexdigest()


class _WorkFiles:
    """The in-progress feature matrix, row statuses and progress record of one output folder."""

    def __init__(self, out_dir: Path):
        self.features_path = out_dir / ".image.partial.npy"
        self.status_path = out_dir / ".image_status.partial.npy"
        self.progress_path = out_dir / ".image.progress.json"
        self.final_features_path = out_dir / IMAGE_FILE
        self.final_mask_path = out_dir / IMAGE_MASK_FILE

    def open(self, fingerprint: str, n_rows: int) -> tuple[np.memmap, np.memmap, int]:
        """The memory maps to write and the first row not yet done (0 unless a matching run was cut short).
        Outputs of an earlier finished run are removed, so they are never mistaken for this run's."""
        self.final_features_path.unlink(missing_ok=True)
        self.final_mask_path.unlink(missing_ok=True)
        rows_done = self._rows_done(fingerprint, n_rows)
        if rows_done:
            return open_memmap(self.features_path, mode="r+"), open_memmap(self.status_path, mode="r+"), rows_done
        self.progress_path.unlink(missing_ok=True)
        features = open_memmap(self.features_path, mode="w+", dtype=np.float16, shape=(n_rows, IMAGE_FEATURE_DIM))
        status = open_memmap(self.status_path, mode="w+", dtype=np.int8, shape=(n_rows,))
        return features, status, 0

    def _rows_done(self, fingerprint: str, n_rows: int) -> int:
        try:
            progress = json.loads(self.progress_path.read_text())
            features = np.load(self.features_path, mmap_mode="r")
            status = np.load(self.status_path, mmap_mode="r")
        except (OSError, ValueError):
            return 0
        fits = features.shape == (n_rows, IMAGE_FEATURE_DIM) and features.dtype == np.float16
        if progress.get("fingerprint") != fingerprint or not fits or status.shape != (n_rows,):
            log.info("image features: unfinished run in %s had other inputs; restarting", self.features_path.parent)
            return 0
        return int(progress["rows_done"])

    def commit(self, features: np.memmap, status: np.memmap, fingerprint: str, rows_done: int) -> None:
        """Flush the rows, then record them as done (the record never runs ahead of the data)."""
        features.flush()
        status.flush()
        atomic_write_text(self.progress_path, json.dumps({"fingerprint": fingerprint, "rows_done": rows_done}))

    def finish(self, features: np.memmap, status: np.memmap) -> None:
        """Publish `image.npy` and `image_mask.npy` and drop the work files."""
        features.flush()
        write_npy(self.final_mask_path, np.asarray(status) == STATUS_CODE["ok"])
        self.progress_path.unlink(missing_ok=True)
        os.replace(self.features_path, self.final_features_path)
        self.status_path.unlink(missing_ok=True)
