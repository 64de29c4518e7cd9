"""One line that says which machine a benchmark ran on: figures from different hosts differ 2-4x."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def describe_host() -> str:
    """CPU model, cores, AVX-512 or not, torch version, and the GPU if there is one."""
    model, flags = platform.processor() or "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    vector = "avx512f" if "avx512f" in flags else "avx2 (no avx512f)" if "avx2" in flags else "no avx2"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"host: {model}, {os.cpu_count()} cores, {vector}; torch {torch.__version__}{gpu}"
