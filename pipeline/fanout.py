"""Train and predict stages side by side, one per device, each through DVC itself (`make train GPUS=0,1,2,3`).

Every train stage (one backbone, one fold) is independent of the others, and so is every predict stage (one
backbone), so N devices run N of them at once: each worker runs `dvc --wait-for-lock repro --single-item
<stage>` with `CUDA_VISIBLE_DEVICES` set to its device (the stage then sees one GPU, `cuda:0`). DVC releases its
repo lock while a stage's command runs and takes it again to record the outputs in dvc.lock (read in
dvc/stage/decorators.py `unlocked_repo`);
without `--wait-for-lock` that second attempt gives up after 3 s ("Unable to acquire lock", dvc/lock.py), which
can happen while another worker is hashing its outputs. `--wait-for-lock` waits instead; a lock error that
still escapes (DVC's rwlock guard keeps the 3 s limit) is retried. A stage that is up to date (or in DVC's
run-cache, e.g. pulled from a remote) is skipped by DVC as usual.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import PipelineError

LOCK_ERRORS = ("Unable to acquire lock", "is busy, it is being blocked by")
LOCK_RETRIES = 5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageRun:
    stage: str
    device: str
    returncode: int
    seconds: float
    log_path: Path


def stages_of(repo_root: Path, kind: str) -> list[str]:
    """The names of dvc.yaml's stages of `kind` (`train` -> `train@<backbone>-<fold>`, ...), in DVC's order."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        return [stage.addressing for stage in repo.index.stages if stage.addressing.startswith(f"{kind}@")]


def repro_command(stage: str) -> list[str]:
    return ["dvc", "--wait-for-lock", "repro", "--single-item", stage]


def run_stage(stage: str, device: str, log_dir: Path, cwd: Path) -> StageRun:
    """One `dvc repro` of `stage` on `device`, its output in `<log_dir>/<stage>.log`; lock errors are retried."""
    log_path = log_dir / f"{stage}.log"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
    start = time.monotonic()
    for attempt in range(LOCK_RETRIES + 1):
        with log_path.open("w") as out:
            returncode = subprocess.run(repro_command(stage), cwd=cwd, env=env, stdout=out,
                                        stderr=subprocess.STDOUT).returncode  # fmt: skip
        if returncode == 0 or not any(text in log_path.read_text(errors="replace") for text in LOCK_ERRORS):
            break
        log.warning("%s: DVC's lock was busy (attempt %d of %d); retrying", stage, attempt + 1, LOCK_RETRIES + 1)
        time.sleep(1.0 + attempt)
    return StageRun(stage, device, returncode, time.monotonic() - start, log_path)


def run_in_parallel(stages: Sequence[str], devices: Sequence[str], log_dir: Path, cwd: Path) -> list[StageRun]:
    """Run `stages`, at most one per device at a time; returns every run. Raises PipelineError if any failed."""
    if not devices or any(not d or "," in d for d in devices):
        raise PipelineError(f"devices must be one or more CUDA device ids, got {list(devices)}; e.g. GPUS=0,1,2,3.")
    log_dir.mkdir(parents=True, exist_ok=True)
    free: queue.Queue[str] = queue.Queue()
    for device in devices:
        free.put(device)

    def on_a_free_device(stage: str) -> StageRun:
        device = free.get()
        try:
            log.info("%s: started on device %s (log: %s)", stage, device, log_dir / f"{stage}.log")
            run = run_stage(stage, device, log_dir, cwd)
            log.info("%s: %s after %.0f s", stage, "done" if run.returncode == 0 else "FAILED", run.seconds)
            return run
        finally:
            free.put(device)

    kinds = "/".join(sorted({stage.split("@")[0] for stage in stages}))  # "train", "predict"
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        runs = list(tqdm(pool.map(on_a_free_device, stages), total=len(stages), desc=f"{kinds} stages", unit="stage"))
    failed = [run for run in runs if run.returncode != 0]
    if failed:
        raise PipelineError(
            f"{len(failed)} of {len(runs)} {kinds} stages failed: "
            + "; ".join(f"{run.stage} (see {run.log_path})" for run in failed)
            + ". Fix the cause and re-run: the stages that finished are kept."
        )
    return runs
