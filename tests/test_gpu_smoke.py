"""benchmarks/gpu_smoke.py in its CPU mode: what a GPU user runs first must itself run and report sane figures."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_smoke_benchmark_reports_few_syncs_speed_memory_and_accuracy_per_backbone():
    result = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--tiny", "--updates", "20"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("host: ") and "cores" in lines[0]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {"test_efficientnet", "test_convnext"}
    for px, syncs, img_per_s, ratio, peak_mib, accuracy in rows.values():
        assert px == "32"
        assert float(syncs) <= 2 / 20  # the loss and its finiteness, read once in 20 updates
        assert float(img_per_s) > 0 and float(ratio) > 0 and float(peak_mib) > 0  # speed: a benchmark's, not a test's
        assert float(accuracy) > 0.5  # chance is 0.1
