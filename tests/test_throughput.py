"""The throughput table: its reference architectures' FLOPs are the ones the plan counts at their sizes."""

import pytest

from pipeline import flops, throughput


@pytest.mark.parametrize("arch", ["resnet50", "convnext_tiny"])
def test_the_reference_flops_in_the_table_are_the_counters(arch):
    reference = throughput.TIMM_BENCHMARKS[arch]
    assert flops.model_cost(arch, reference.train_px).train / 1e9 == pytest.approx(reference.train_gflop, abs=1e-3)
    assert flops.model_cost(arch, reference.infer_px).forward / 1e9 == pytest.approx(reference.infer_gflop, abs=1e-3)
