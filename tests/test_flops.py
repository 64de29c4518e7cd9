"""FLOPs of one backbone as the plan counts them: frozen parts, the grouped-convolution fix, timm's figures."""

import pytest
import torch

from pipeline import flops


def test_a_frozen_model_costs_less_to_train_and_the_same_to_run():
    whole, frozen = flops.model_cost("test_resnet", 32, 0), flops.model_cost("test_resnet", 32, 2)
    assert frozen.train < whole.train and frozen.forward == whole.forward
    assert frozen.trainable_params < whole.trainable_params and frozen.state_bytes == whole.state_bytes


def test_a_depthwise_convolution_backward_counts_twice_its_forward():
    """torch 2.14's formula counts a grouped weight gradient `groups` times over; the plan's does not."""
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    forward = flops.count_flops(lambda: conv(x))
    assert forward == 2 * 2 * 8 * 9 * 16 * 16  # 2 FLOPs a multiply-add, batch 2, 8 channels, 3x3, 16x16
    assert flops.count_flops(lambda: conv(x).sum().backward()) == 3 * forward  # forward, input and weight gradients


def test_convnext_tiny_counts_timms_published_gmacs():
    cost = flops.model_cost("convnext_tiny", 224)
    assert cost.forward == pytest.approx(2 * 4.47e9, rel=0.01)  # timm: 4.47 GMACs at 224 px
    assert cost.train == pytest.approx(3 * cost.forward, rel=0.01)
