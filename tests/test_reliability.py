"""A user's mistake costs one line and no time; outputs hold no timings or machine paths (issue 14 §2, §3)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from marn.config import ConfigError, DataConfig, FeaturesConfig, Paths, SyntheticConfig, Word2VecConfig, validate
from marn.data.fetch import fetch
from marn.data.prepare import prepare
from marn.features import build
from marn.features import images as images_module
from marn.pipeline import load_params
from tests.pipeline_support import pipeline_env

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("override, named", [
    ("data.source=nosuch", "data.source: unknown source 'nosuch'; valid sources: synthetic, amazon2014"),
    ("train.models=[NoSuchModel]", "train.models[0] must be a known model"),
    ("train.batch_size=-4", "train.batch_size must be at least 1, got -4"),
    ("features.batch_size=0", "features.batch_size must be > 0, got 0"),
    ("ops.backend=gpu", "ops.backend must be one of auto"),
    ("abtest.control=NoSuchModel", "abtest.control: unknown model 'NoSuchModel'"),
    ("data.max_bad_line_share=1.5", "data.max_bad_line_share must be in [0, 1], got 1.5"),
    ("analysis.tsne_model=NoSuchModel", "analysis.tsne_model must be a known model"),
])
def test_every_section_value_is_checked_on_load(override, named):
    with pytest.raises(ConfigError) as caught:
        load_params([override])
    message = str(caught.value)
    assert named in message and "\n" not in message, message


def test_files_source_needs_both_files_named():
    with pytest.raises(ConfigError, match=r"data.source=files needs data.reviews"):
        load_params(["data.source=files", "data.meta=m.json"])


@pytest.mark.parametrize("stage, override", [
    ("fetch", "train.batch_size=-4"),  # a key the stage does not read still fails it
    ("prepare", "data.source=nosuch"),
])
def test_stage_command_stops_with_one_error_line_before_prefect_starts(stage, override):
    done = subprocess.run([sys.executable, "-m", "flows.stage", stage, override], cwd=PROJECT_ROOT, env=pipeline_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert override.split("=")[0] in lines[0]
    assert "Starting temporary server" not in done.stdout + done.stderr


def _write_gz_lines(path: Path, records: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return path


def test_reviews_of_items_not_in_the_metadata_name_both_files_as_given(tmp_path, monkeypatch):
    given = tmp_path / "given"
    given.mkdir()
    reviews = _write_gz_lines(given / "reviews.json.gz", [
        {"reviewerID": f"U{u}", "asin": f"R{i}", "overall": 4.0, "unixReviewTime": 1_400_000_000 + i}
        for u in range(3) for i in range(4)])
    meta = _write_gz_lines(given / "meta.json.gz", [
        {"asin": f"M{i}", "title": "Other shop's item", "categories": [["Toys"]]} for i in range(4)])
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(source="files", reviews="given/reviews.json.gz", meta=str(meta))
    fetch(cfg, tmp_path / "raw")
    with pytest.raises(ValueError) as caught:
        prepare(cfg, tmp_path / "raw", tmp_path / "prepared", progress=False)
    message = str(caught.value)
    assert "data.reviews=given/reviews.json.gz" in message and f"data.meta={meta}" in message, message
    assert "raw" not in message.replace(str(tmp_path), ""), message
    assert not (tmp_path / "prepared").exists()
    assert reviews.is_file()


def test_fetch_and_prepare_records_are_the_same_bytes_in_any_folder(tmp_path):
    synthetic = SyntheticConfig(n_users=30, n_items=12, n_categories=2, n_brands=2, max_seq_len=8, image_size=16)
    cfg = DataConfig(synthetic=synthetic)
    for name in ("one", "two"):
        fetch(cfg, tmp_path / name / "raw")
        prepare(cfg, tmp_path / name / "raw", tmp_path / name / "prepared", progress=False)
    for record in ("raw/fetch.json", "prepared/report.json"):
        first, second = ((tmp_path / name / record).read_bytes() for name in ("one", "two"))
        assert first == second, record
        assert str(tmp_path).encode() not in first and b"seconds" not in first, record


def _items_parquet(prepared: Path, image_refs: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    refs = ["", "", *image_refs]
    prepared.mkdir(parents=True)
    pq.write_table(pa.table({
        "item_idx": pa.array(np.arange(len(refs), dtype=np.int32)),
        "title_tokens": pa.array([[], []] + [["red", "shirt"]] * len(image_refs), type=pa.list_(pa.string())),
        "image_ref": pa.array(refs),
    }), prepared / "items.parquet")


def _features_config() -> FeaturesConfig:
    return FeaturesConfig(image_size=32, batch_size=4, word_dim=8, download_retries=0,
                          word2vec=Word2VecConfig(epochs=1, min_count=1))


def _features_paths(tmp_path: Path) -> Paths:
    return Paths.from_params(validate({"data": {"raw_dir": "raw", "prepared_dir": "prepared"}, "features": {
        "dir": "features", "image_cache_dir": "cache", "vectors_cache_dir": "vectors"}}), root=tmp_path)


def test_no_image_reference_masks_the_image_modality_without_vgg16(tmp_path, monkeypatch):
    def no_vgg16(*args, **kwargs):
        raise AssertionError("VGG16 weights were requested although no item has an image")

    monkeypatch.setattr(build, "fc7_model", no_vgg16)
    monkeypatch.setattr(images_module, "download", no_vgg16)
    _items_parquet(tmp_path / "prepared", ["", "", ""])
    report = build.build_features(_features_config(), _features_paths(tmp_path))
    assert report["images_ok"] == 0 and report["image_failures"] == {"no_image_ref": 3}
    assert report["weights"] == "none" and "no item has an image reference" in report["image_modality"]
    assert not np.load(tmp_path / "features" / "image_mask.npy").any()
    assert json.loads((tmp_path / "features" / "report.json").read_text())["image_modality"]


def test_missing_and_corrupt_images_are_counted_in_the_report_and_printed(tmp_path, capsys, monkeypatch):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(images / "ok.jpg")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    _items_parquet(tmp_path / "prepared", [str(images / "ok.jpg"), str(images / "broken.jpg"),
                                           str(images / "gone.jpg")])
    random_fc7 = (images_module.vgg16_fc7(None, seed=0), images_module.Fc7Weights("random", "seed 0", None))
    monkeypatch.setattr(build, "fc7_model", lambda cfg, **kwargs: random_fc7)  # offline: no ImageNet download
    report = build.build_features(_features_config(), _features_paths(tmp_path))
    assert report["image_failures"] == {"corrupt": 1, "missing_file": 1}
    written = json.loads((tmp_path / "features" / "report.json").read_text())
    assert written["image_failures"] == {"corrupt": 1, "missing_file": 1}
    assert not build.RUN_KEYS & set(written)  # timings stay out of the tracked file
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert "1 of 3 items have image features" in printed and "corrupt 1" in printed and "missing_file 1" in printed


def test_each_train_stage_tracks_only_the_params_its_model_reads(tmp_path):
    from marn import train_params

    config = load_params()
    assert "lambda0" in train_params.params_read_by(config, "MARN")["train"]
    assert "lambda0" not in train_params.params_read_by(config, "BaseModel+IDs")["train"]
    for name, lambda0 in (("a", 0.05), ("b", 0.7)):
        changed_config = load_params([f"train.lambda0={lambda0}"])
        train_params.run(changed_config, Paths.from_params(changed_config, root=tmp_path / name))
    written = {name: tmp_path / name / config.train.params_dir for name in "ab"}
    changed = {p.name for p in written["a"].iterdir() if p.read_bytes() != (written["b"] / p.name).read_bytes()}
    assert changed == {"MARN.json", "BaseModel+MAF+ADV.json", "BaseModel+MAF+DDMA.json",
                       "BaseModel+MAF+DDMA+PropertyGate.json", "BaseModel+MAF+DDMA+CandidateAttention.json"}
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["train"]["do"]["params"] == [{"${train.params_dir}/${item}.json": None}]


def test_only_killed_runs_of_the_deployment_lose_their_temp_copy(tmp_path):
    from flows.pipeline import remove_dead_experiments

    def executor(name: str, status: int) -> Path:
        root = tmp_path / "exps" / f"copy-{name}"
        root.mkdir(parents=True)
        info = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "run" / name / f"{name}.run"
        info.parent.mkdir(parents=True)
        info.write_text(json.dumps({"name": name, "status": status, "root_dir": str(root), "location": "tempdir"}))
        return root

    killed = executor("marn-train-0badc0de", 2)  # RUNNING when its process died
    finished = executor("marn-train-600dc0de", 3)
    cleaned_up = executor("marn-train-c1ea7ed0", 2)  # a run that ended: DVC deleted its copy, not its record
    cleaned_up.rmdir()
    someone_elses = executor("by-hand", 2)
    assert remove_dead_experiments(tmp_path) == ["marn-train-0badc0de"]
    assert not killed.exists() and finished.exists() and someone_elses.exists()
