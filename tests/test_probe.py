"""The measured probe of the present device, through its CPU twin: achieved FLOP/s and a column of its own."""

import torch

from pipeline import plan, probe, throughput
from pipeline.config import TtaConfig
from tests.test_plan import tiny


def test_the_probe_measures_achieved_flops_on_the_cpu(tmp_path):
    cfg = tiny(tmp_path, "train.batch_size=8")
    rates = probe.probe_rates(cfg.backbones["tiny"], TtaConfig(hflip=True), 16, torch.device("cpu"), updates=2,
                             batches=1)  # fmt: skip
    assert 0 < rates.train < 1e13 and 0 < rates.infer < 1e13 and rates.lower is None
    cached = tiny(tmp_path, "train.batch_size=8", "train.freeze_blocks=1", "train.cached_features=true")
    rates = probe.probe_rates(cached.backbones["tiny"], TtaConfig(), 16, torch.device("cpu"), updates=2, batches=1)
    assert 0 < rates.lower < 1e13


def test_a_measured_device_gets_its_own_column(tmp_path):
    cfg = tiny(tmp_path, "train.batch_size=8", "predict.batch_size=16")
    measured = probe.measured_class(cfg, torch.device("cpu"), updates=2, batches=1)
    assert measured.name == "this CPU" and set(measured.rates_by_arch) == {"test_efficientnet"}
    classes = probe.with_measured({"H100": throughput.GPU_CLASSES["H100"]}, measured)
    assert set(plan.make_plan(cfg, classes).total()["seconds"]) == {"H100", "this CPU"}
