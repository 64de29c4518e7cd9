"""Train every backbone and fold, then predict every backbone, side by side, one stage per GPU, through DVC (a
command, not a DVC stage).

`make train GPUS=0,1,2,3` runs: `dvc repro folds features` (data, folds and every backbone's features stage,
once), then the train stages four at a time, each on its own GPU, then the predict stages the same way, then
`dvc repro` for the ensemble and the submission. See pipeline/fanout.py.
"""

import argparse
import subprocess
from pathlib import Path

from pipeline import cli, config, fanout
from pipeline.errors import PipelineError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", required=True, help="comma-separated CUDA device ids, one train stage each")
    parser.add_argument("--logs", type=Path, default=Path("artifacts/logs"), help="one <stage>.log per train stage")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params)
    if cfg.launcher.nproc_per_node != 1:
        raise PipelineError(
            f"{args.params}: launcher.nproc_per_node is {cfg.launcher.nproc_per_node}, but a parallel run gives each"
            " train stage one GPU; set it to 1 (`dvc exp run -S launcher.nproc_per_node=1` or edit params.yaml)."
        )
    root = args.params.resolve().parent
    devices = [device.strip() for device in args.devices.split(",")]
    _dvc(["repro", "folds", "features"], root)  # what every train stage depends on
    for kind in ("train", "predict"):  # every predict stage waits for its backbone's folds
        fanout.run_in_parallel(fanout.stages_of(root, kind), devices, args.logs, root)
    _dvc(["repro"], root)


def _dvc(arguments: list[str], cwd: Path) -> None:
    if subprocess.run(["dvc", *arguments], cwd=cwd).returncode != 0:
        raise PipelineError(f"`dvc {' '.join(arguments)}` failed (its output is above); fix that and re-run.")


if __name__ == "__main__":
    cli.run(main)
