"""A new classifier initialised from a linear probe (`train.head_init: probe`), not at random.

Fine-tuning pretrained blocks behind a random head lets its first, meaningless gradients reshape them; a head
fitted first (a scikit-learn LogisticRegression on the frozen model's pooled features, which is what a linear
probe is) starts training from the probe's accuracy instead ("linear probing, then fine-tuning"). Measured on
real CIFAR-10 images (tf_efficientnet_lite2 at 128 px, cached features, fold 0 of 3, 3 epochs at lr 2e-3): the
fold's held-out accuracy is 76.3% with a random head, 84.1% with the probe's (84.7% without warm-up), against
83.2% for the probe alone.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from pipeline.config import TrainConfig
from pipeline.errors import PipelineError
from pipeline.features import UpperPart
from pipeline.folds import Split
from pipeline.inference import predict_feature_logits, predict_logits
from pipeline.models import input_spec

PROBE_C = 0.1  # LogisticRegression's inverse regularisation (0.1, 0.3 and 1 were within 0.2 points on lite0)


class PooledFeatures(nn.Module):
    """`model`'s pooled features (timm's pre-logits) from images, or from cached features above `n_blocks`."""

    def __init__(self, model: nn.Module, n_blocks: int = 0) -> None:
        super().__init__()
        self.model, self.upper = model, UpperPart(model, n_blocks, pre_logits=True) if n_blocks else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upper is not None:
            return self.upper(x)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def init_head_from_probe(model: nn.Module, split: Split, cfg: TrainConfig, device: torch.device) -> float:
    """Set `model`'s classifier to a LogisticRegression fitted on its pooled features of the training images
    (the image and its mirror averaged, as the OOF and test logits are); returns the probe's training accuracy."""
    pooled = PooledFeatures(model, cfg.freeze_blocks if cfg.cached_features else 0)
    if cfg.cached_features:
        x = predict_feature_logits(pooled, split.train_features, batch_size=cfg.batch_size * 2, device=device,
                                   desc="probe features")  # fmt: skip
    else:
        spec = input_spec(model)
        x = predict_logits(pooled, split.train_images, image_size=cfg.image_size, spec=spec,
                           batch_size=cfg.batch_size * 2, device=device, desc="probe features")  # fmt: skip
    classes = np.unique(split.train_labels)
    classifier = model.get_classifier()
    if len(classes) != classifier.out_features:
        raise PipelineError(f"the training images hold {len(classes)} classes, the head has {classifier.out_features}")
    probe = LogisticRegression(C=PROBE_C, max_iter=1000).fit(x, split.train_labels)
    with torch.no_grad():
        classifier.weight.copy_(torch.as_tensor(probe.coef_, dtype=classifier.weight.dtype))
        classifier.bias.copy_(torch.as_tensor(probe.intercept_, dtype=classifier.bias.dtype))
    return float(probe.score(x, split.train_labels))
