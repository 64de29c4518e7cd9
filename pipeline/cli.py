"""How every stage process starts and ends: logging set up once, user errors as one line and exit 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Call a stage's `main(argv)`; a PipelineError becomes `error: <message>` on stderr and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main(argv)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
