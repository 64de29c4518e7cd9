"""Predict every test image with every fold's model of one backbone (the `tta` views), averaged over folds."""

import argparse
from pathlib import Path

import numpy as np

from pipeline import batches, cli, config, dataset, features, inference, layout, models, scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", required=True, help="a name listed in params.yaml's backbones")
    parser.add_argument("--models", type=Path, required=True, help="reads <models>/<backbone>/fold<k>.safetensors")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="reads <features>/<backbone>/ if cached")
    parser.add_argument("--out", type=Path, required=True, help="writes <out>/<backbone>.npz: test ids and logits")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params)
    backbone = cfg.backbone(args.backbone)
    models.check_model_name(backbone.model)
    data = dataset.load_dataset(args.data)
    train = backbone.train
    cached = None
    if train.cached_features:  # each checkpoint's frozen blocks are checked against the features' in turn
        cached = features.load_backbone_features(
            layout.backbone_file(args.features, args.backbone, ""), backbone.model, train, data.train_images,
            data.test_images, pretrained_frozen=False,
        )  # fmt: skip
    logits = inference.predict_with_checkpoints(
        [layout.fold_file(args.models, args.backbone, k, ".safetensors") for k in cfg.cv.folds], backbone.model,
        data.test_images, batch_size=cfg.predict.batch_size, hflip=cfg.tta.hflip, shift=cfg.tta.shift,
        device=batches.pick_device(), features=cached, freeze_blocks=train.freeze_blocks,
    )  # fmt: skip
    # 300,000 x 10 logits: 6 MB as float16; save_scores refuses rows that overflow it
    scores.save_scores(layout.backbone_file(args.out, args.backbone, ".npz"), data.test_ids, logits, dtype=np.float16)


if __name__ == "__main__":
    cli.run(main)
