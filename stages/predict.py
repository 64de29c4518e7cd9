"""Predict every test image with every fold's model of one backbone (the `tta` views), averaged over folds."""

import argparse
from pathlib import Path

import numpy as np

from pipeline import batches, cli, config, dataset, features, inference, layout, scores
from pipeline.provenance import arrays_digest, made_by, record_of


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", required=True, help="a name listed in params.yaml's backbones")
    parser.add_argument("--models", type=Path, required=True, help="reads <models>/<backbone>/fold<k>.safetensors")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="reads <features>/<backbone>/")
    parser.add_argument("--out", type=Path, required=True, help="writes <out>/<backbone>.npz: test ids and logits")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params)
    backbone = cfg.backbone(args.backbone)
    config.check_registries(cfg)
    data = dataset.load_dataset(args.data)
    made_features = made_by(layout.backbone_file(args.features, args.backbone, ""), cfg, f"features@{args.backbone}",
                            data=data.made)  # fmt: skip
    # every fold's model trained with params.yaml's settings on these images and features: one recipe, one run
    checkpoints = [layout.fold_file(args.models, args.backbone, k, ".safetensors") for k in cfg.cv.folds]
    made_models = [made_by(path, cfg, f"train@{args.backbone}-{k}", data=data.made, features=made_features)
                   for k, path in zip(cfg.cv.folds, checkpoints, strict=True)]  # fmt: skip
    train = backbone.train
    logits = inference.predict_with_checkpoints(
        checkpoints, backbone.model, data.test_images, batch_size=cfg.predict.batch_size, hflip=cfg.tta.hflip,
        shift=cfg.tta.shift, device=batches.pick_device(), freeze_blocks=train.freeze_blocks, compile=train.compile,
        features=features.load_features(made_features) if train.cached_features else None,
    )  # fmt: skip
    record = record_of(cfg, f"predict@{args.backbone}", {"logits": arrays_digest(logits)}, data=data.made,
                       features=made_features, models=made_models)  # fmt: skip
    # 300,000 x 10 logits: 6 MB as float16; save_scores refuses rows that overflow it
    scores.save_scores(layout.backbone_file(args.out, args.backbone, ".npz"), data.test_ids, logits, dtype=np.float16,
                       record=record)  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
