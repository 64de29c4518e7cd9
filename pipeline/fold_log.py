"""A train stage's per-epoch curves and fold metrics, logged with DVCLive.

One folder per backbone and fold (`layout.fold_file(live, backbone, fold, "")`): `metrics.json` (the fold's final
metrics with the last epoch's values) and `plots/metrics/<name>.tsv` (a row per epoch: timestamp in ms, `step` =
the epoch, the value). dvc.yaml declares them as the train stage's metrics and plots, so `dvc exp show` lists them
for every experiment, `dvc plots diff` overlays them, and VS Code's DVC extension draws them while a fold trains.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from dvclive import Live

logging.getLogger("dvclive").setLevel(logging.WARNING)  # not "Logging to experiment '<random name>'" per fold


class FoldLog:
    """DVCLive's `Live` on `folder`, which it empties first: `epoch(row)` after each epoch, `finish(metrics)` last."""

    def __init__(self, folder: Path) -> None:
        # dvc.yaml declares the outputs and `dvc exp run` saves the experiment: DVCLive writes neither
        self._live = Live(dir=str(folder), dvcyaml=None, save_dvc_exp=False)

    def epoch(self, row: Mapping[str, float]) -> None:
        """One epoch's row of the training history (`epoch` counts from 1; every other value is plotted)."""
        self._live.step = int(row["epoch"])
        for name, value in row.items():
            if name != "epoch":
                self._live.log_metric(name, float(value), timestamp=True)  # resumed epochs: when replayed
        self._live.next_step()

    def finish(self, metrics: Mapping[str, float]) -> None:
        """The fold's final metrics into metrics.json (no curve), then DVCLive's own end."""
        for name, value in metrics.items():
            self._live.log_metric(name, float(value), plot=False)
        self._live.end()
