"""Measuring the present device: a few updates of the real training loop and a few inference batches per
backbone, timed, become a device class (`throughput.FixedClass`) that stands in for its class's assumption.
"""

from __future__ import annotations

import dataclasses
import re
import time

from pipeline.config import Backbone, Config, TtaConfig
from pipeline.flops import model_cost
from pipeline.plan import N_CLASSES
from pipeline.throughput import FixedClass, Rates, arch_of


def probe_rates(backbone: Backbone, tta: TtaConfig, predict_batch: int, device, *, updates: int = 12,
                batches: int = 3) -> Rates:  # fmt: skip
    """Achieved FLOP/s on `device` of `backbone`'s training loop (`training.train_epoch`, `updates` updates after
    two of warm-up) and of its forwards (`predict_batch` images x `batches`, after one batch), and with cached
    features of its frozen part (`features.compute_features`), at its configured size, on random images (or random
    cached features), from scratch weights: tens of seconds on a GPU."""
    import numpy as np

    from pipeline.batches import synchronize
    from pipeline.distributed import World
    from pipeline.features import UpperPart, compute_features, lower_part
    from pipeline.folds import Split
    from pipeline.inference import predict_feature_logits, predict_logits
    from pipeline.models import input_spec
    from pipeline.recipe import build_recipe
    from pipeline.training import train_epoch

    cfg = dataclasses.replace(backbone.train, weights="scratch", head_init="random", head_epochs=0)
    cost = model_cost(backbone.model, cfg.image_size, cfg.freeze_blocks, cfg.cached_features)
    rng = np.random.default_rng(0)
    n = cfg.batch_size * (updates + 2)
    images = rng.integers(0, 256, (max(n, predict_batch * (batches + 1)), 32, 32, 3), dtype=np.uint8)
    labels = np.arange(len(images)) % N_CLASSES
    features = None
    if cfg.cached_features:
        features = rng.standard_normal((len(images), 2, *cost.feature_shape), dtype=np.float32).astype(np.float16)
    split = Split(images, labels, images[:predict_batch], labels[:predict_batch], np.arange(1, predict_batch + 1),
                  train_features=features, valid_features=None if features is None else features[:predict_batch],
                  )  # fmt: skip
    world = World(device=device)
    recipe = build_recipe(backbone.model, cfg, len(images), world)
    spec = input_spec(recipe.model)

    def timed(run) -> float:
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        return time.perf_counter() - start

    train_epoch(recipe, split, cfg, world, 0, spec, name="probe warm-up", max_updates=2)
    train_seconds = timed(lambda: train_epoch(recipe, split, cfg, world, 0, spec, name="probe", max_updates=updates))
    views = 1 + int(tta.hflip)  # the shifted views cost what the mirror does

    def predict(count: int) -> None:
        if features is not None:
            predict_feature_logits(UpperPart(recipe.model, cfg.freeze_blocks), features[:count],
                                   batch_size=predict_batch, device=device, hflip=tta.hflip,
                                   compile=cfg.compile)  # fmt: skip
        else:
            predict_logits(recipe.model, images[:count], image_size=cfg.image_size, spec=spec,
                           batch_size=predict_batch, device=device, hflip=tta.hflip, compile=cfg.compile)  # fmt: skip

    predict(predict_batch)
    count = predict_batch * batches
    infer_seconds = timed(lambda: predict(count))
    lower = None
    if features is not None:
        out = np.empty((count, 2, *cost.feature_shape), dtype=np.float16)
        frozen = lower_part(recipe.model, cfg.freeze_blocks)

        def lower_forwards(n: int) -> None:
            compute_features(frozen, images[:n], out[:n], image_size=cfg.image_size, spec=spec,
                             batch_size=predict_batch, device=device, desc="probe features",
                             compile=cfg.compile)  # fmt: skip

        lower_forwards(predict_batch)
        lower = 2 * count * cost.lower / timed(lambda: lower_forwards(count))
    return Rates(train=updates * cfg.batch_size * cost.train / train_seconds,
                 infer=count * views * cost.forward / infer_seconds, lower=lower)  # fmt: skip


GPU_NAMES = {"T4": r"\bT4\b", "P100": r"P100", "V100": r"V100", "L4": r"\bL4\b", "A10G": r"A10G",
             "A100": r"A100", "H100": r"H100"}  # fmt: skip


def measured_class(cfg: Config, device, *, updates: int = 12, batches: int = 3) -> FixedClass:
    """The present device as a class: its probed rates per backbone architecture, named after the GPU class it
    is (`T4` for a "Tesla T4"), else "this GPU" (or "this CPU")."""
    import torch

    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"
    name = next((c for c, pattern in GPU_NAMES.items() if re.search(pattern, label)), None)
    rates = {arch_of(b): probe_rates(b, cfg.tta, cfg.predict.batch_size, device, updates=updates, batches=batches)
             for b in cfg.backbones.values()}  # fmt: skip
    name = name or ("this GPU" if device.type == "cuda" else "this CPU")
    return FixedClass(name, f"{label}, measured", rates, "probe_rates: the training loop and forwards timed here",
                      0.15, is_gpu=device.type == "cuda")  # fmt: skip


def with_measured(classes: dict, measured: FixedClass) -> dict:
    """`classes` with the measured device in place of its class's assumption (or added)."""
    return {**classes, measured.name: measured}


def probe_wanted(probe: bool | None, markdown: bool) -> bool:
    """Whether to probe: as asked, else on a CUDA machine for the human and JSON outputs (the README's markdown
    is the table's, the same on every machine)."""
    if probe is not None:
        return probe
    import torch

    return torch.cuda.is_available() and not markdown
