"""Records of what made each artifact: where each kind keeps its record, and what `expect` refuses."""

import json

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.models import create_backbone, save_checkpoint
from pipeline.provenance import (
    Made,
    ProvenanceError,
    Record,
    embed,
    expect,
    made_by,
    read_record,
    record_of,
    sidecar,
    write_record,
)
from pipeline.scores import save_scores

RECORD = Record("train@a-1", {"train.lr": 0.001, "tta.hflip": True}, {"data": "d1", "folds": "f1"}, {"weights": "w"})


def test_a_records_digest_names_every_field():
    digests = {RECORD.digest}
    for changed in (Record("train@a-0", RECORD.settings, RECORD.inputs, RECORD.facts),
                    Record(RECORD.stage, {**RECORD.settings, "train.lr": 0.002}, RECORD.inputs, RECORD.facts),
                    Record(RECORD.stage, RECORD.settings, {**RECORD.inputs, "data": "d2"}, RECORD.facts),
                    Record(RECORD.stage, RECORD.settings, RECORD.inputs, {"weights": "v"})):  # fmt: skip
        digests.add(changed.digest)
    assert len(digests) == 5
    same = Record("train@a-1", {"tta.hflip": True, "train.lr": 0.001}, {"folds": "f1", "data": "d1"}, {"weights": "w"})
    assert same.digest == RECORD.digest  # key order does not matter


def test_every_kind_of_artifact_keeps_its_record_where_read_record_finds_it(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_record(folder, RECORD)
    csv = tmp_path / "folds.csv"
    csv.write_text("id,label,fold\n")
    write_record(csv, RECORD)
    save_scores(tmp_path / "oof.npz", np.arange(1, 3), np.zeros((2, 10)), record=RECORD)
    save_checkpoint(tmp_path / "fold1.safetensors", create_backbone("test_resnet", "scratch"), "a", 32, record=RECORD)
    (tmp_path / "weights.json").write_text(json.dumps(embed({"method": "fitted"}, RECORD)))
    assert sidecar(csv) == tmp_path / "folds.provenance.json"
    for path in (folder, csv, tmp_path / "oof.npz", tmp_path / "fold1.safetensors", tmp_path / "weights.json"):
        assert read_record(path) == RECORD, path


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: save_scores(p, np.arange(1, 3), np.zeros((2, 10))), "holds no record of what made it"),
        (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "unreadable (BadZipFile"),
        (lambda p: None, "not found; run the stage that writes it"),
    ],
    ids=["no record", "unreadable", "missing"],
)
def test_a_file_without_a_readable_record_is_refused_naming_it(tmp_path, write, message):
    path = tmp_path / "oof.npz"
    write(path)
    with pytest.raises(ProvenanceError) as excinfo:
        read_record(path)
    assert str(excinfo.value).startswith(f"{path}: ") and message in str(excinfo.value)


def test_a_malformed_record_is_refused(tmp_path):
    (tmp_path / "provenance.json").write_text('{"stage": "extract", "settings": [], "inputs": {}, "facts": {}}')
    with pytest.raises(ProvenanceError, match="record of what made it is malformed"):
        read_record(tmp_path)


@pytest.fixture
def made(tmp_path):
    path = tmp_path / "oof.npz"
    save_scores(path, np.arange(1, 3), np.zeros((2, 10)), record=RECORD)
    return path


def test_expect_accepts_the_stage_settings_and_inputs_the_record_holds(made):
    data, folds = Made(made, Record("extract", facts={"x": 1})), Made(made, Record("folds"))
    record = Record(RECORD.stage, RECORD.settings, {"data": data.digest, "folds": folds.digest}, RECORD.facts)
    save_scores(made, np.arange(1, 3), np.zeros((2, 10)), record=record)
    assert expect(made, "train@a-1", {"train.lr": 0.001}, {"data": data, "folds": folds}).record == record


def test_expect_refuses_another_stage_other_settings_and_other_inputs(made):
    with pytest.raises(ProvenanceError) as excinfo:
        expect(made, "train@a-0")
    assert str(excinfo.value) == (
        f"{made}: made by 'train@a-1', not by 'train@a-0' whose output this stage reads there; run `dvc repro"
        " train@a-0` (or `dvc repro` for everything)."
    )
    with pytest.raises(ProvenanceError) as excinfo:
        expect(made, "train@a-1", {"train.lr": 0.01, "tta.hflip": False, "tta.shift": 2, "train.seed": 1})
    assert str(excinfo.value) == (
        f"{made}: made with train.lr=0.001, tta.hflip=true, tta.shift=<not set> (and 1 more), but params.yaml now"
        " gives train.lr=0.01, tta.hflip=false, tta.shift=2; run `dvc repro train@a-1` (or `dvc repro` for"
        " everything)."
    )
    other = Made(made.parent / "data", Record("extract", facts={"n_train": 99}))
    with pytest.raises(ProvenanceError) as excinfo:
        expect(made, "train@a-1", inputs={"data": other})
    assert str(excinfo.value).startswith(f"{made}: made from another data than the one this stage reads now")
    assert f"({made.parent / 'data'})" in str(excinfo.value)


def test_a_list_of_inputs_must_match_in_order(tmp_path):
    a, b = Made(tmp_path / "a", Record("x", facts={"i": 0})), Made(tmp_path / "b", Record("x", facts={"i": 1}))
    path = tmp_path / "logits.npz"
    record = Record("predict@m", inputs={"models": [a.digest, b.digest]})
    save_scores(path, np.arange(1, 3), np.zeros((2, 10)), record=record)
    expect(path, "predict@m", inputs={"models": [a, b]})
    with pytest.raises(ProvenanceError, match="made from another models"):
        expect(path, "predict@m", inputs={"models": [b, a]})


def test_made_by_compares_with_the_settings_params_yaml_gives_the_stage_now(tmp_path):
    (tmp_path / "params.yaml").write_text("backbones: {a: {model: resnet18, lr: 0.5}}\ncv: {folds: [0, 1]}\n")
    cfg = load_config(tmp_path / "params.yaml")
    path = tmp_path / "oof.npz"
    save_scores(path, np.arange(1, 3), np.zeros((2, 10)), record=record_of(cfg, "train@a-1", {"weights": "w"}))
    assert made_by(path, cfg, "train@a-1").record.facts == {"weights": "w"}
    assert read_record(path).settings["train.lr"] == 0.5  # the backbone's own value, resolved
    (tmp_path / "params.yaml").write_text("backbones: {a: {model: resnet18, lr: 0.25}}\ncv: {folds: [0, 1]}\n")
    with pytest.raises(ProvenanceError, match=r"made with train.lr=0.5, but params.yaml now gives train.lr=0.25"):
        made_by(path, load_config(tmp_path / "params.yaml"), "train@a-1")
