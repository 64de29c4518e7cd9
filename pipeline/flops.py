"""FLOPs of one backbone: per image, of a training pass, a head-only pass, a forward and the frozen lower part's
forward, with the sizes of what its stages write.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` on the real timm architecture, built with
pretrained=False (no weights needed), at `train.image_size`, batch 2, on the meta device (shapes only, no
arithmetic: seconds in the CPU process): forward + backward with requires_grad as training sets it
(`recipe.freeze_lower_blocks`; only the classifier in head-only epochs; only `features.UpperPart` on cached
features), forward only for scoring and predicting. FlopCounterMode counts matrix products and convolutions (mm,
addmm, bmm, convolution, their backward, attention) and nothing else: not elementwise work (activations, batch and
layer norm, residual adds, drop path, mixup, the optimizer's and the EMA's updates), pooling, or the upscaling of
the 32x32 images. The throughput table (`pipeline.throughput`) is calibrated in the same FLOPs, so that work is
inside its achieved FLOP/s. FlopCounterMode's formula for a convolution's weight gradient ignores `groups` (torch
2.14; pytorch/pytorch#183405 fixes it upstream): a depthwise convolution counted C times over made convnext_tiny's
training pass 8.7x its forward, so `_conv_backward_flop` replaces it. Checked: convnext_tiny at 224 px counts
8.91 GFLOP forward (timm publishes 4.47 GMACs = 8.94 GFLOP) and 26.7 GFLOP a training pass (3.0x).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCost:
    """FLOPs per image of what a backbone's stages run, and the sizes of what they write."""

    train: float  # one training pass: forward + backward (the upper part only with cached features)
    head_train: float  # one pass of a head-only epoch
    forward: float  # one scoring or predicting forward (the upper part with cached features)
    lower: float  # one forward of the frozen lower part (features@; 0 without cached features)
    feature_shape: tuple[int, ...]  # (C, H, W) of a cached feature map; () without cached features
    state_bytes: int  # the state dict (a checkpoint, the EMA copy)
    trainable_params: int  # what the optimizer keeps moments for

    @property
    def feature_bytes(self) -> int:
        """One image's cached features: both views, float16."""
        return 2 * 2 * math.prod(self.feature_shape) if self.feature_shape else 0


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:  # fmt: skip
    """torch's formula for aten.convolution_backward with the weight gradient divided by `groups`."""
    from torch.utils.flop_counter import conv_flop_count

    def t(shape):
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        pair = (t(grad_out_shape), t(x_shape)) if transposed else (t(x_shape), t(grad_out_shape))
        flops += conv_flop_count(*pair, t(out_shape[1]), transposed=False) // groups
    return flops


def count_flops(run) -> int:
    """FLOPs of what `run()` does (FlopCounterMode, with the grouped convolution's weight gradient counted right)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return counter.get_total_flops()


@functools.cache
def model_cost(model_name: str, image_size: int, freeze_blocks: int = 0, cached: bool = False) -> ModelCost:
    """The FLOPs of `model_name` (timm name, optional tag) at `image_size`, trained as `train.freeze_blocks` and
    `train.cached_features` say; counted once per process, in seconds: batch 2 on the meta device, no weights."""
    import torch

    from pipeline.features import UpperPart, lower_part
    from pipeline.models import create_backbone
    from pipeline.recipe import freeze_lower_blocks

    model = create_backbone(model_name, "scratch")
    # shapes only, no arithmetic: on the meta device, where autocast (of the fp32 classifier) does not exist, so
    # the classifier gets nn.Linear's own forward back (the same FLOPs)
    vars(model.get_classifier()).pop("forward", None)
    model = model.to("meta")
    freeze_lower_blocks(model, freeze_blocks)
    images = torch.randn(2, 3, image_size, image_size, device="meta")
    lower, inputs, shape = 0, images, ()
    if cached:
        lower_blocks = lower_part(model, freeze_blocks).eval()
        with torch.no_grad():
            lower = count_flops(lambda: lower_blocks(images)) / 2
            inputs = lower_blocks(images)
        shape = tuple(inputs.shape[1:])
        model = UpperPart(model, freeze_blocks)
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        forward = count_flops(lambda: model.eval()(inputs)) / 2
    model.train()
    train = count_flops(lambda: model(inputs).float().sum().backward()) / 2
    classifier = (model.model if cached else model).get_classifier()
    for param in trainable:
        param.requires_grad_(any(param is p for p in classifier.parameters()))
    head_train = count_flops(lambda: model(inputs).float().sum().backward()) / 2
    state = (model.model if cached else model).state_dict()
    state_bytes = sum(t.numel() * t.element_size() for t in state.values())
    return ModelCost(train, head_train, forward, lower, shape, state_bytes, sum(p.numel() for p in trainable))
