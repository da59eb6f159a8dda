"""dvc.yaml's `params:` of each stage are exactly the config keys the stage's code reads, and its data paths come
from params.yaml: every stage runs on a tiny synthetic dataset with a config that records each key read.

A key read but not declared would let DVC skip a stage whose result it changes; a key declared but not read would
rerun a stage for nothing. Path keys (`marn.config.PATH_KEYS`) are not params: stages get them as `Paths`.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import pytest
import yaml
from tests.pipeline_support import TINY_PARAMS, merge

from marn.config import PATH_KEYS, Params, Paths, section_keys, validate
from marn.features.images import WeightsError
from marn.pipeline import STAGES
from marn.train_params import keys_read_by

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DVC_STAGES = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
MODELS = ["BaseModel+IDs", "MARN"]  # one model without an adversary, one with


def recording(config: Params) -> tuple[Params, set[str]]:
    """A copy of `config` whose sections add the dotted key of every value read to the returned set."""
    reads: set[str] = set()

    def copy(section, prefix: str):
        names = {f.name for f in fields(section)}

        def get(self, name):
            value = object.__getattribute__(self, name)
            if name in names and not is_dataclass(value):
                reads.add(prefix + name)
            return value

        values = {f.name: copy(v, f"{prefix}{f.name}.") if is_dataclass(v) else v
                  for f in fields(section) for v in [getattr(section, f.name)]}
        recorder = type(f"Recording{type(section).__name__}", (type(section),), {"__getattribute__": get})
        return recorder(**values)

    return copy(config, ""), reads


def declared(entries: list, config: Params) -> set[str]:
    """dvc.yaml `params:` entries as dotted leaf keys (a section names all of its keys but the paths)."""
    keys: set[str] = set()
    for entry in entries:
        assert isinstance(entry, str), f"unexpected params entry {entry!r}"
        value = config
        for part in entry.split("."):
            value = getattr(value, part)
        keys |= set(section_keys(value, entry)) if is_dataclass(value) else {entry}
    return keys - set(PATH_KEYS.values())


def source_variants(raw: Path, root: Path) -> dict[str, dict]:
    """`data` settings of every other kind of source, on copies of the synthetic run's files in `raw`: an Amazon
    release from a file:// mirror, two given files, an interaction table with every column named."""
    mirror = root / "mirror"
    mirror.mkdir()
    shutil.copy(raw / "reviews_Synthetic.json.gz", mirror / "reviews_Electronics_5.json.gz")
    shutil.copy(raw / "meta_Synthetic.json.gz", mirror / "meta_Electronics.json.gz")
    with gzip.open(raw / "reviews_Synthetic.json.gz", "rt") as f:
        reviews = [json.loads(line) for line in f]
    log = root / "log.csv"
    log.write_text("visitor,product,when,stars,event\n" + "".join(
        f"{r['reviewerID']},{r['asin']},{r['unixReviewTime']},{r['overall']},view\n" for r in reviews))
    items = root / "items.csv"
    items.write_text("product,name,kind,maker,picture\n" + "".join(
        f"{asin},item {asin},c{i % 3},b{i % 2},\n" for i, asin in enumerate(sorted({r["asin"] for r in reviews}))))
    columns = {"user": "visitor", "item": "product", "timestamp": "when", "rating": "stars", "type": "event",
               "title": "name", "category": "kind", "brand": "maker", "image": "picture"}
    return {
        "amazon2014": {"source": "amazon2014", "category": "Electronics", "base_url": mirror.as_uri()},
        "files": {"source": "files", "reviews": str(mirror / "reviews_Electronics_5.json.gz"),
                  "meta": str(mirror / "meta_Electronics.json.gz")},
        "interactions": {"source": "interactions", "interactions": str(log), "items": str(items),
                         "columns": columns},
    }


@pytest.fixture(scope="module")
def reads(tmp_path_factory) -> dict[str, set[str]]:
    """The keys each stage read on a tiny synthetic run, stage by stage as `dvc repro` runs them; fetch and prepare
    also run on every other kind of source, each adding what it reads."""
    root = tmp_path_factory.mktemp("stage_params")
    values = merge(merge({}, TINY_PARAMS), {"train": {"models": MODELS, "seed_models": MODELS}})
    config = validate(values)
    paths = Paths.from_params(config, root=root)
    found = {}
    for name in ("fetch", "prepare", "features", "train_params"):
        recorded, found[name] = recording(config)
        STAGES[name].run(recorded, paths)
    for source, data in source_variants(paths.raw, root).items():
        variant = validate(merge(merge({}, values), {"data": data}))
        variant_paths = replace(paths, raw=root / source / "raw", prepared=root / source / "prepared")
        for name in ("fetch", "prepare"):
            recorded, variant_reads = recording(variant)
            STAGES[name].run(recorded, variant_paths)
            found[name] |= variant_reads
    # given VGG16 weights: the stage reads their sha256 and stops on this one's mismatch before loading anything
    (root / "weights.pth").write_bytes(b"not weights")
    given_weights = validate(merge(merge({}, values), {"features": {"vgg16_weights": str(root / "weights.pth"),
                                                                    "vgg16_weights_sha256": "00ff"}}))
    recorded, weights_reads = recording(given_weights)
    with pytest.raises(WeightsError, match="but features.vgg16_weights_sha256 is 00ff"):
        STAGES["features"].run(recorded, replace(paths, features=root / "weights_features"))
    found["features"] |= weights_reads
    for model in MODELS:
        recorded, found[f"train@{model}"] = recording(config)
        STAGES["train"].run(recorded, paths, model)
    for name in ("evaluate", "abtest", "report"):
        recorded, found[name] = recording(config)
        STAGES[name].run(recorded, paths)
    return found


@pytest.mark.parametrize("stage", ["fetch", "prepare", "features", "train_params", "evaluate", "abtest", "report"])
def test_stage_declares_exactly_the_params_it_reads(stage, reads):
    config = validate({})
    want = declared(DVC_STAGES[stage].get("params", []), config)
    assert reads[stage] - want == set(), f"{stage} reads keys dvc.yaml does not declare"
    assert want - reads[stage] == set(), f"dvc.yaml declares keys {stage} never reads"


@pytest.mark.parametrize("model", MODELS)
def test_train_stage_reads_exactly_its_params_file(model, reads):
    assert reads[f"train@{model}"] == set(keys_read_by(model))
    params_file = "${train.params_dir}/${item}.json"
    assert DVC_STAGES["train"]["do"]["params"] == [{params_file: None}]
    assert DVC_STAGES["lambda0"]["do"]["params"] == [{params_file.replace("${item}", "MARN"): None}]
    assert DVC_STAGES["train_seeds"]["params"] == [{params_file.replace("${item}", "${item.model}"): None}]


def test_data_paths_in_dvc_yaml_come_from_params():
    defaults = {str(value).rstrip("/") for value in (getattr(getattr(validate({}), key.split(".")[0]),
                                                             key.split(".")[1]) for key in PATH_KEYS.values())}
    for name, stage in DVC_STAGES.items():
        body = stage.get("do", stage)
        for kind in ("deps", "outs", "metrics", "plots"):
            for entry in body.get(kind, []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                assert not any(path == d or path.startswith(d + "/") for d in defaults), \
                    f"{name}.{kind}: {path} spells a path params.yaml names; write it as ${{...}}"
