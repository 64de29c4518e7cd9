"""How every stage process starts and ends: logging set up once, user errors as one line and exit 1.

With `PIPELINE_TIMINGS=<file>` in the environment (`make demo` sets it), each stage also appends one JSON line
`{"stage": ..., "seconds": ..., "peak_rss_mb": ...}` to that file when it succeeds: the wall time of its own work
and the process's peak resident memory, which `python -m stages.summary` and benchmarks/rehearsal.py print.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError

TIMINGS_ENV = "PIPELINE_TIMINGS"


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Call a stage's `main(argv)`; a PipelineError becomes `error: <message>` on stderr and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    start = time.monotonic()
    crashed = False
    try:
        main(argv)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception:  # a bug, not bad input: its traceback, then exit 1
        traceback.print_exc()
        crashed = True
    if crashed:
        # The traceback is gone now, and with it the frames that held DVC's git objects: finalize them while imports
        # still work. At interpreter shutdown dulwich's Pack.__del__ imports `warnings` and prints three "Exception
        # ignored ... sys.meta_path is None" tracebacks under the real one.
        gc.collect()
        raise SystemExit(1)
    if os.environ.get(TIMINGS_ENV) and "LOCAL_RANK" not in os.environ:  # torchrun's workers: their parent records
        record_timing(Path(os.environ[TIMINGS_ENV]), stage_label(sys.argv), time.monotonic() - start)


def stage_label(argv: list[str]) -> str:
    """`train lite0 fold 0` for `.../stages/train.py --backbone lite0 --fold 0 ...`; `extract` for extract."""
    words = [Path(argv[0]).stem]
    for flag, prefix in (("--backbone", ""), ("--fold", "fold ")):
        if flag in argv[:-1]:
            words.append(prefix + argv[argv.index(flag) + 1])
    return " ".join(words)


def record_timing(path: Path, stage: str, seconds: float) -> None:
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:  # one short line per write: stages running side by side do not interleave
        f.write(json.dumps({"stage": stage, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_rss_mb)}) + "\n")
