"""benchmarks/gpu_smoke.py in its CPU mode: what a GPU user runs first must itself run and report sane figures."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

from pipeline.distributed import World

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


def test_the_bare_baseline_takes_the_loops_step_autocast_fused_optimizer_and_synchronisation(monkeypatch):
    """The CPU twin of a GPU: autocast_dtype says bf16 (as on an A100), and synchronize is counted. The baseline
    must use both, and the recipe's own optimizer (fused on CUDA), or its "x bare" ratio reads well above 1."""
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "benchmarks" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    waits, dtypes, built = [], [], []
    monkeypatch.setattr(bench, "autocast_dtype", lambda device: torch.bfloat16)
    monkeypatch.setattr(bench, "synchronize", waits.append)
    real_build = bench.build_recipe

    def build(*args, **kwargs):
        recipe = real_build(*args, **kwargs)
        recipe.model.conv1.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
        built.append(recipe)
        return recipe

    monkeypatch.setattr(bench, "build_recipe", build)
    assert bench.bare("test_resnet", 32, 8, 3, World()) > 0
    assert set(dtypes) == {torch.bfloat16} and len(dtypes) == 4  # warm-up + 3 timed steps, each under autocast
    assert waits == [torch.device("cpu")] * 2  # before the clock starts and before it is read
    assert len(built) == 1 and built[0].optimizer.param_groups[0]["lr"] > 0  # the recipe's optimizer
