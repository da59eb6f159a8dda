"""VGG16 fc7 image features: fetching (local, file://, 127.0.0.1 HTTP), failures per reason, weights
(hash-checked file, ImageNet cache, random only when allowed), resume, and the stage end to end.

Tests that are not about preprocessing run at image_size 64 (VGG16 takes ~3 images/s at 224 here)."""

import hashlib
import http.server
import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from marn.config import FeaturesConfig
from marn.data.download import DownloadError
from marn.features import build_features
from marn.features.build import RUN_KEYS
from marn.features import images as images_module
from marn.features.images import (
    IMAGE_FEATURE_DIM,
    Fc7Weights,
    ImageLocation,
    RandomWeightsWarning,
    WeightsError,
    extract_image_features,
    load_vgg16_weights,
    locate_image,
    torch_device,
    vgg16_fc7,
)
from tests.tiny_data import TinyData, tiny_paths

RANDOM = Fc7Weights("random", "seed 0", None)


def features_paths(tmp_path: Path, prepared: Path, out: Path, raw: Path | None = None):
    """`Paths` for the features stage: items of `prepared`, features into `out`, relative images from `raw`."""
    return tiny_paths(TinyData(prepared, out), tmp_path, raw=raw or tmp_path / "raw")


def write_image(path: Path, size=(48, 40), seed=0, mode="RGB", fmt="JPEG") -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path, fmt)
    return path


def write_items(prepared_dir: Path, image_refs: list[str], titles: list[list[str]] | None = None) -> None:
    """An items.parquet in the prepared layout (FORMATS.md), rows 0 and 1 reserved."""
    refs = ["", "", *image_refs]
    titles = [[], [], *(titles or [["red", "guitar", "live"][: 1 + i % 3] for i in range(len(image_refs))])]
    prepared_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "item_idx": pa.array(np.arange(len(refs), dtype=np.int32)),
        "asin": pa.array([f"A{i:05d}" for i in range(len(refs))]),
        "title": pa.array([" ".join(t) for t in titles]),
        "title_tokens": pa.array(titles, type=pa.list_(pa.string())),
        "image_ref": pa.array(refs),
    }), prepared_dir / "items.parquet")


def features_config(**changes) -> FeaturesConfig:
    options = dict(
        image_size=64, batch_size=4, word_dim=8, download_retries=0, download_timeout_s=5.0,
    )
    return FeaturesConfig(**{**options, **changes})


class ImageServer:
    """127.0.0.1 HTTP server: serves `files`, answers 404 otherwise, and stalls on /slow.jpg."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests[self.path] = server.requests.get(self.path, 0) + 1
                if self.path == "/slow.jpg":
                    time.sleep(2.0)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def image_server():
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def random_fc7():
    return vgg16_fc7(None, seed=0)


@pytest.fixture()
def no_imagenet_download(monkeypatch):
    """Make the ImageNet weights download fail at once, as it does offline."""

    def refuse(url, dest, **kwargs):
        raise DownloadError(url, "connection_error", "no network in this test")

    monkeypatch.setattr(images_module, "download", refuse)


# --- locating, fetching, decoding ------------------------------------------------------------------------


def test_locate_image_by_kind_of_reference(tmp_path):
    cache = tmp_path / "cache"
    assert locate_image("", cache) is None and locate_image("  ", cache) is None
    assert locate_image("/data/a.jpg", cache) == ImageLocation(Path("/data/a.jpg"))
    assert locate_image((tmp_path / "b c.jpg").as_uri(), cache) == ImageLocation(tmp_path / "b c.jpg")
    assert locate_image("images/x.jpg", cache, raw_dir=tmp_path) == ImageLocation(tmp_path / "images" / "x.jpg")
    url = "http://127.0.0.1:9/I/51b5WDjdhPL._SX300_.JPG"
    remote = locate_image(url, cache)
    assert remote.url == url and remote.path.parent == cache and remote.path.suffix == ".jpg"
    assert remote.path.stem == hashlib.sha256(url.encode()).hexdigest()[:32]


@pytest.mark.slow
def test_build_features_counts_every_failure_reason_and_goes_on(tmp_path, image_server, no_imagenet_download):
    img = tmp_path / "img"
    img.mkdir()
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    truncated = write_image(img / "truncated.jpg", size=(64, 64), seed=9)
    truncated.write_bytes(truncated.read_bytes()[:300])
    (img / "garbage.jpg").write_bytes(b"this is not an image")
    image_server.files["/ok.jpg"] = write_image(tmp_path / "served.jpg", seed=5).read_bytes()
    refs = [
        str(write_image(img / "a.jpg", seed=1)),  # row 2
        write_image(img / "b.png", seed=2, mode="RGBA", fmt="PNG").as_uri(),  # 3: file:// URL, RGBA
        str(write_image(img / "c.jpg", seed=3, mode="L")),  # 4: grayscale
        f"{image_server.url}/ok.jpg",  # 5
        f"{image_server.url}/gone.jpg",  # 6: 404
        f"{image_server.url}/slow.jpg",  # 7: timeout
        str(img / "missing.jpg"),  # 8
        str(img / "garbage.jpg"),  # 9
        str(truncated),  # 10
        "",  # 11
        "images/rel.jpg",  # 12: relative to raw_dir
        f"{image_server.url}/ok.jpg",  # 13: the same URL as row 5, downloaded once
    ]
    write_image(raw / "images" / "rel.jpg", seed=4)
    write_items(tmp_path / "prepared", refs)
    cfg = features_config(download_timeout_s=0.5)
    out = tmp_path / "features"

    with pytest.warns(RandomWeightsWarning):
        report = build_features(cfg, features_paths(tmp_path, tmp_path / "prepared", out, raw))

    assert report["image_failures"] == {
        "corrupt": 2, "missing_file": 1, "no_image_ref": 1, "not_found": 1, "timeout": 1,
    }
    assert report["items"] == 12 and report["images_ok"] == 6 and report["images_computed"] == 6
    assert report["image_failure_examples"]["not_found"] == [f"item 6: '{image_server.url}/gone.jpg'"]
    assert report["weights"] == "random" and report["weights_sha256"] is None
    assert report["word_vectors"] == "word2vec" and report["word_dim"] == 8
    assert json.loads((out / "report.json").read_text()) == {k: v for k, v in report.items() if k not in RUN_KEYS}

    features = np.load(out / "image.npy", mmap_mode="r")
    mask = np.load(out / "image_mask.npy")
    assert features.dtype == np.float16 and features.shape == (14, IMAGE_FEATURE_DIM)
    assert mask.dtype == np.bool_ and mask.tolist() == [False, False] + [True] * 4 + [False] * 6 + [True] * 2
    assert np.array_equal(features[13], features[5])
    assert not features[~mask].any() and all(features[row].any() for row in np.flatnonzero(mask))
    assert np.isfinite(features).all()
    title_ids = np.load(out / "title_ids.npy")
    word_vectors = np.load(out / "word_vectors.npy")
    words = (out / "words.txt").read_text().splitlines()
    assert title_ids.shape == (14, cfg.title_len) and title_ids.dtype == np.int32
    assert word_vectors.shape == (len(words), 8) and word_vectors.dtype == np.float32
    assert words[:2] == ["<pad>", "<oov>"] and not word_vectors[0].any()
    assert sorted(p.name for p in out.iterdir()) == [
        "image.npy", "image_mask.npy", "report.json", "title_ids.npy", "word_vectors.npy", "words.txt",
    ]

    # A second run takes the downloaded image from the cache.
    with pytest.warns(RandomWeightsWarning):
        build_features(cfg, features_paths(tmp_path, tmp_path / "prepared", tmp_path / "again", raw))
    assert image_server.requests["/ok.jpg"] == 1
    assert (tmp_path / "again" / "image.npy").read_bytes() == (out / "image.npy").read_bytes()


def test_missing_item_table_and_misplaced_rows_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="items.parquet"):
        build_features(features_config(), features_paths(tmp_path, tmp_path / "nowhere", tmp_path / "out"))
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    pq.write_table(pa.table({"item_idx": pa.array([0, 2, 1], pa.int32()), "title_tokens": [[], [], []],
                             "image_ref": ["", "", ""]}), prepared / "items.parquet")
    with pytest.raises(ValueError, match="row 1 holds item_idx 2"):
        build_features(features_config(), features_paths(tmp_path, prepared, tmp_path / "out"))
    pq.write_table(pa.table({"item_idx": pa.array([0, 1], pa.int32())}), prepared / "items.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['title_tokens', 'image_ref'\]"):
        build_features(features_config(), features_paths(tmp_path, prepared, tmp_path / "out"))


def test_device_names_are_checked():
    with pytest.raises(ValueError, match="not a device"):
        torch_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            torch_device("cuda")


# --- weights -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_weights_file(tmp_path_factory):
    """A randomly initialised torchvision vgg16 state dict saved as a weights file (528 MB, removed
    afterwards), and its sha256."""
    from torchvision.models import vgg16

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "vgg16-random.pth"
    torch.save(vgg16(weights=None).state_dict(), path)
    yield path, hashlib.sha256(path.read_bytes()).hexdigest()
    path.unlink()


@pytest.mark.slow
def test_fc7_equals_torchvision_vgg16_run_by_hand(tmp_path, vgg16_weights_file):
    """Real preprocessing (resize 256, center crop 224) and a hash-checked weights file."""
    from torchvision import transforms
    from torchvision.models import vgg16

    weights_path, sha256 = vgg16_weights_file
    paths = [
        write_image(tmp_path / "wide.jpg", size=(300, 200), seed=1),
        write_image(tmp_path / "tall.png", size=(180, 260), seed=2, mode="RGBA", fmt="PNG"),
        write_image(tmp_path / "small.jpg", size=(64, 64), seed=3, mode="L"),
    ]
    write_items(tmp_path / "prepared", [str(p) for p in paths])
    cfg = features_config(image_size=224, batch_size=2, vgg16_weights=str(weights_path),
                          vgg16_weights_sha256=sha256.upper(), allow_random_weights=False)
    report = build_features(cfg, features_paths(tmp_path, tmp_path / "prepared", tmp_path / "features"))
    assert report["weights"] == "file" and report["weights_sha256"] == sha256 and report["images_ok"] == 3
    ours = torch.from_numpy(np.load(tmp_path / "features" / "image.npy")[2:].astype(np.float32))

    model = vgg16(weights=None)
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    model.eval()
    preprocess = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
        pooled = torch.flatten(model.avgpool(model.features(batch)), 1)
        fc6, fc7 = model.classifier[0], model.classifier[3]
        by_hand = F.relu(fc7(F.relu(fc6(pooled))))
    assert by_hand.abs().max() > 0
    torch.testing.assert_close(ours, by_hand.half().float(), rtol=2e-3, atol=2e-3 * float(by_hand.abs().max()))


def _config(**changes):
    return FeaturesConfig(**changes)


def test_weights_file_needs_a_matching_hash(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(WeightsError, match=f"set features.vgg16_weights_sha256: {actual}"):
        load_vgg16_weights(_config(vgg16_weights=str(path)))
    with pytest.raises(WeightsError, match=f"sha256 is {actual}, but features.vgg16_weights_sha256 is 00ff"):
        load_vgg16_weights(_config(vgg16_weights=str(path), vgg16_weights_sha256="00ff"))
    named = tmp_path / f"vgg16-{actual[:8]}.pth"
    named.write_bytes(path.read_bytes())
    state_dict, weights = load_vgg16_weights(_config(vgg16_weights=named.as_uri()))
    assert weights == Fc7Weights("file", named.as_uri(), actual) and state_dict["w"].tolist() == [0, 0]  # as given
    wrong_name = tmp_path / "vgg16-0badbad0.pth"
    wrong_name.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match="does not start with 0badbad0"):
        load_vgg16_weights(_config(vgg16_weights=str(wrong_name)))
    with pytest.raises(WeightsError, match="no such file"):
        load_vgg16_weights(_config(vgg16_weights=str(tmp_path / "absent.pth")))


class NotWeights:
    """Any pickled object that is not plain tensors; torch.load(weights_only=True) must refuse it."""


def test_weights_file_loads_only_tensors(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"w": NotWeights()}, path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(WeightsError, match="not a loadable state dict"):
        load_vgg16_weights(_config(vgg16_weights=str(path), vgg16_weights_sha256=sha256))


def test_weights_that_do_not_fit_vgg16_are_named(tmp_path):
    path = tmp_path / "small.pth"
    torch.save({"w": torch.zeros(2)}, path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(WeightsError, match="does not fit torchvision's vgg16"):
        images_module.fc7_model(_config(vgg16_weights=str(path), vgg16_weights_sha256=sha256))


def test_imagenet_weights_from_the_hub_cache_are_hash_checked(tmp_path, monkeypatch):
    """A cached file under torchvision's name is used without a download, but only if its hash fits."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, cached)
    with pytest.raises(WeightsError, match="does not start with 397923af"):
        load_vgg16_weights(_config(allow_random_weights=False))


def test_random_weights_only_when_allowed_and_then_loudly(no_imagenet_download):
    with pytest.raises(WeightsError, match="features.vgg16_weights"):
        load_vgg16_weights(_config(allow_random_weights=False))
    with pytest.warns(RandomWeightsWarning, match="RANDOM WEIGHTS"):
        state_dict, weights = load_vgg16_weights(_config(allow_random_weights=True, seed=7))
    assert state_dict is None and weights == Fc7Weights("random", "seed 7", None)


def test_random_weights_are_seeded_and_cut_after_fc7_relu(random_fc7):
    again = vgg16_fc7(None, seed=0)
    assert torch.equal(again.classifier[3].weight, random_fc7.classifier[3].weight)
    assert len(again.classifier) == 5 and isinstance(again.classifier[4], torch.nn.ReLU) and not again.training


# --- resume ------------------------------------------------------------------------------------------------


class Interrupted(RuntimeError):
    pass


class StopAfter(torch.nn.Module):
    """The model, killed after `batches` forward passes; counts the passes it ran."""

    def __init__(self, model: torch.nn.Module, batches: int | None = None):
        super().__init__()
        self.model = model
        self.batches = batches
        self.calls = 0

    def forward(self, x):
        if self.batches is not None and self.calls == self.batches:
            raise Interrupted(f"killed after {self.calls} batches")
        self.calls += 1
        return self.model(x)


@pytest.fixture()
def resume_refs(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    (img / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    refs = ["", ""] + [str(write_image(img / f"{i}.jpg", seed=i)) for i in range(7)]
    refs[5] = str(img / "bad.jpg")
    return refs


def test_resumed_run_writes_the_same_bytes_as_an_uninterrupted_one(tmp_path, random_fc7, resume_refs):
    cfg = features_config(batch_size=2)
    cache = tmp_path / "cache"
    whole = extract_image_features(resume_refs, tmp_path / "whole", random_fc7, RANDOM, cfg, image_cache_dir=cache)

    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "image.npy").write_bytes(b"an earlier run's output")
    with pytest.raises(Interrupted):
        extract_image_features(resume_refs, cut, StopAfter(random_fc7, 2), RANDOM, cfg, image_cache_dir=cache)
    assert not (cut / "image.npy").exists()
    # Rows 0-1 are reserved (no model pass); passes ran for rows 2-3 and 4-5, then the run died.
    assert json.loads((cut / ".image.progress.json").read_text())["rows_done"] == 6

    rest = StopAfter(random_fc7)
    resumed = extract_image_features(resume_refs, cut, rest, RANDOM, cfg, image_cache_dir=cache)
    assert resumed["resumed_at_row"] == 6 and rest.calls == 2  # rows 6-7 and 8
    assert resumed["image_failures"] == whole["image_failures"] == {"corrupt": 1}
    for name in ("image.npy", "image_mask.npy"):
        assert (cut / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert sorted(p.name for p in cut.iterdir()) == ["image.npy", "image_mask.npy"]


def test_unfinished_run_with_other_settings_is_started_over(tmp_path, random_fc7, resume_refs):
    cache = tmp_path / "cache"
    with pytest.raises(Interrupted):
        extract_image_features(resume_refs, tmp_path / "out", StopAfter(random_fc7, 1), RANDOM,
                               features_config(batch_size=2), image_cache_dir=cache)
    report = extract_image_features(resume_refs, tmp_path / "out", random_fc7, RANDOM,
                                    features_config(batch_size=3), image_cache_dir=cache)
    assert report["resumed_at_row"] == 0 and report["images_ok"] == 6


def test_thumbnail_encoder_runs_without_weights_and_says_so(tmp_path, monkeypatch):
    """`features.image_encoder: thumbnail` (not the paper's) loads no VGG16, writes 4096-d rows whose
    thumbnail part follows the picture's colour, and the report names the encoder."""
    monkeypatch.setattr(images_module, "vgg16_fc7", lambda *a, **k: pytest.fail("thumbnail must not build VGG16"))
    raw = tmp_path / "raw"
    raw.mkdir()
    colours = {"red.png": (230, 20, 20), "blue.png": (20, 20, 230), "red2.png": (235, 25, 15)}
    for name, rgb in colours.items():
        Image.new("RGB", (40, 30), rgb).save(raw / name)
    write_items(tmp_path / "prepared", list(colours))
    report = build_features(features_config(image_encoder="thumbnail"),
                            features_paths(tmp_path, tmp_path / "prepared", tmp_path / "out", raw))
    assert report["image_encoder"] == "thumbnail (not the paper's)" and report["weights"] == "thumbnail"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["image_encoder"] == report["image_encoder"]
    rows = np.load(tmp_path / "out" / "image.npy").astype(np.float64)
    assert rows.shape == (5, IMAGE_FEATURE_DIM) and np.load(tmp_path / "out" / "image_mask.npy")[2:].all()
    red, blue, red2 = rows[2:]
    assert np.linalg.norm(red - red2) < 0.2 * np.linalg.norm(red - blue)
    # a one-colour picture puts all its pixels in one histogram bin: sqrt(1) * sqrt(1024) = 32
    assert np.sort(red[3072:])[-2:].tolist() == [0.0, 32.0]


def test_unknown_image_encoder_is_refused_naming_the_key(tmp_path):
    from marn.config import ConfigError
    from marn.pipeline import load_params

    write_items(tmp_path / "prepared", ["a.jpg"])
    with pytest.raises(ValueError, match="features.image_encoder must be one of vgg16, thumbnail, got 'resnet'"):
        build_features(features_config(image_encoder="resnet"),
                       features_paths(tmp_path, tmp_path / "prepared", tmp_path / "out"))
    assert not (tmp_path / "out" / "title_ids.npy").exists()  # refused before any work
    with pytest.raises(ConfigError, match="features.image_encoder must be one of vgg16, thumbnail"):
        load_params(["features.image_encoder=resnet"])
