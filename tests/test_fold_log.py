import csv
import json
from pathlib import Path

import pytest

from pipeline.fold_log import FoldLog


def read_curve(folder: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) rows of one DVCLive curve, as `dvc plots` reads them."""
    with (folder / "plots" / "metrics" / f"{name}.tsv").open() as f:
        return [(int(row["step"]), float(row[name])) for row in csv.DictReader(f, delimiter="\t")]


ROWS = [
    {"epoch": 1, "lr": 1.0e-3, "train_loss": 2.0, "valid_accuracy": 0.5},
    {"epoch": 2, "lr": 5.0e-4, "train_loss": 1.5, "valid_accuracy": 0.75},
]


def test_epochs_become_curves_by_epoch_and_the_final_metrics_the_summary(tmp_path):
    log = FoldLog(tmp_path)
    for row in ROWS:
        log.epoch(row)
    log.finish({"accuracy": 0.75, "log_loss": 0.6, "ema_kept": 0})
    for name in ("lr", "train_loss", "valid_accuracy"):
        assert read_curve(tmp_path, name) == [(row["epoch"], pytest.approx(row[name])) for row in ROWS]
    assert not (tmp_path / "plots" / "metrics" / "epoch.tsv").exists()
    assert not (tmp_path / "plots" / "metrics" / "accuracy.tsv").exists()  # final metrics are not curves
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary == {"step": 2, "lr": 5.0e-4, "train_loss": 1.5, "valid_accuracy": 0.75, "accuracy": 0.75,
                       "log_loss": 0.6, "ema_kept": 0}  # fmt: skip
    assert not (tmp_path / "dvc.yaml").exists() and not list(tmp_path.parent.glob("dvc.yaml"))


def test_a_new_log_on_the_same_folder_starts_the_curves_afresh(tmp_path):
    first = FoldLog(tmp_path)
    for row in ROWS:
        first.epoch(row)
    first.finish({"accuracy": 0.75})
    again = FoldLog(tmp_path)  # a re-run of the stage: resumed epochs are replayed by train_one_fold
    again.epoch(ROWS[0])
    assert read_curve(tmp_path, "valid_accuracy") == [(1, 0.5)]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {
        "step": 1,
        **{k: v for k, v in ROWS[0].items() if k != "epoch"},
    }
