"""Counting the points where the host waits for the device: each costs a GPU its queue of work.

On CUDA, torch reports every synchronising call itself (`torch.cuda.set_sync_debug_mode`). On the CPU there
is no device to wait for, so the CPU twin counts what would wait on CUDA: tensor values read into Python
(`item()`, `bool()`, `float()`, `int()`, `tolist()`, `numpy()`) by this project's own code.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

_PROJECT = str(Path(__file__).resolve().parent)
_READS = ("item", "__bool__", "__float__", "__int__", "tolist", "numpy")


@contextlib.contextmanager
def count_host_syncs(device: torch.device) -> Iterator[list[str]]:
    """Yield a list that collects one entry per host-device synchronisation inside the block."""
    syncs: list[str] = []
    if device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield syncs
            finally:
                torch.cuda.set_sync_debug_mode(previous)
                syncs += [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        return
    originals = {name: getattr(torch.Tensor, name) for name in _READS}

    def counting(name):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(_PROJECT):
                syncs.append(f"{name} in {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return originals[name](self, *args, **kwargs)

        return read

    try:
        for name in _READS:
            setattr(torch.Tensor, name, counting(name))
        yield syncs
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
