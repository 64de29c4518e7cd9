"""Artifacts as the stages write them, records of provenance included, for tests that damage one or start mid-way:
params.yaml, folds.csv, a features folder, checkpoints, OOF and test logits, and what a finished run leaves for
`python -m stages.submit`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from torch import nn

from pipeline.config import Config, load_config
from pipeline.dataset import Dataset
from pipeline.features import write_not_cached
from pipeline.folds import make_folds, write_folds
from pipeline.models import save_checkpoint, weights_digest
from pipeline.provenance import Made, Record, expect, record_of, write_record
from pipeline.scores import save_scores
from stages import submission

PARAMS = {"backbones": {"a": {"model": "a"}, "b": {"model": "b"}}, "ensemble": {"method": "fitted"}}
SUMMARY = {"method": "fitted", "backbones": ["a", "b"], "nested_cv_accuracy": 0.91234}


def params_file(folder: Path, params: dict) -> tuple[Path, Config]:
    path = Path(folder) / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path, load_config(path)


def folds_csv(path: Path, data: Dataset, cfg: Config) -> tuple[np.ndarray, Made]:
    """folds.csv of `cfg`'s folds and seed, as the folds stage writes it."""
    fold_of_image = make_folds(data.train_labels, cfg.cv.n_folds, cfg.cv.seed)
    write_folds(path, data.train_ids, data.train_labels, fold_of_image, record_of(cfg, "folds", data=data.made))
    return fold_of_image, expect(path, "folds")


def features_not_cached(folder: Path, backbone: str, data: Dataset, cfg: Config) -> Made:
    """features@<backbone>'s folder for a backbone that trains on images."""
    path = Path(folder) / backbone
    write_not_cached(path, record_of(cfg, f"features@{backbone}", data=data.made))
    return expect(path, f"features@{backbone}")


def checkpoint(path: Path, model: nn.Module, model_name: str, cfg: Config, backbone: str, fold: int, *, data: Dataset,
               folds: Made, features: Made, image_size: int = 32) -> Made:  # fmt: skip
    """A train stage's checkpoint of `model` (whatever it holds), with the record that stage would write."""
    record = record_of(cfg, f"train@{backbone}-{fold}", {"weights": weights_digest(model)}, data=data.made,
                       folds=folds, features=features)  # fmt: skip
    save_checkpoint(path, model, model_name, image_size, record=record)
    return expect(path, record.stage)


def oof_logits(path: Path, ids: np.ndarray, logits: np.ndarray, cfg: Config, backbone: str, fold: int, *,
               data: Dataset, folds: Made, features: Made) -> Made:  # fmt: skip
    record = record_of(cfg, f"train@{backbone}-{fold}", {"oof": fold}, data=data.made, folds=folds, features=features)
    save_scores(path, ids, logits, record=record)
    return expect(path, record.stage)


def test_logits(path: Path, logits: np.ndarray, cfg: Config, backbone: str, *, data: Dataset, features: Made,
                models: list[Made]) -> Made:  # fmt: skip
    record = record_of(cfg, f"predict@{backbone}", data=data.made, features=features, models=models)
    save_scores(path, data.test_ids, logits, dtype=np.float16, record=record)
    return expect(path, record.stage)


def finished_run(folder: Path, labels: list[int] = (6, 8), data_source: str = "kaggle") -> list[str]:
    """What a finished `dvc repro` leaves for `python -m stages.submit`, for test ids 1..len(labels) predicted as
    `labels` (class indices): params.yaml, the download folder's sampleSubmission.csv and record, the ensemble's
    test probabilities and record, and the submission stage's own output. Returns submit's arguments."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    params, cfg = params_file(folder, PARAMS)
    raw = Path(folder) / "raw"
    raw.mkdir(parents=True)
    ids = np.arange(1, len(labels) + 1)
    (raw / "sampleSubmission.csv").write_text("id,label\n" + "".join(f"{i},cat\n" for i in ids))
    write_record(raw, Record("download", settings={"data.source": data_source}))
    probs = Path(folder) / "test_probs.npz"
    save_scores(probs, ids, np.eye(10)[list(labels)], record=record_of(cfg, "ensemble", SUMMARY))
    csv, sample = Path(folder) / "submission.csv", str(raw / "sampleSubmission.csv")
    submission.main(["--probs", str(probs), "--sample-submission", sample, "--out", str(csv)])
    return ["--file", str(csv), "--sample-submission", sample, "--probs", str(probs), "--params", str(params),
            "--scores-out", str(Path(folder) / "leaderboard.json")]  # fmt: skip
