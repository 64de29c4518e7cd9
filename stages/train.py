"""Fine-tune one timm backbone on one CV fold; save its weights and out-of-fold logits, log metrics and curves.

Runs as one process, or, with `launcher.nproc_per_node` > 1 in params.yaml, re-launches itself as that many
DDP processes under `torchrun --standalone`. Across machines, start it with torchrun yourself:
`torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=host0:29500 -m stages.train
--backbone <name> --fold <k> --data artifacts/data --folds artifacts/folds.csv --features artifacts/features
--models artifacts/models --oof artifacts/oof --live artifacts/live` (dvc.yaml's train command).
"""

import argparse
import subprocess
import sys
from pathlib import Path

from pipeline import cli, config, dataset, distributed, features, fold_log, folds, layout, training
from pipeline.provenance import made_by, record_of


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", required=True, help="a name listed in params.yaml's backbones")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--folds", type=Path, required=True, help="folds.csv, its record beside it")
    parser.add_argument("--features", type=Path, required=True, help="reads <features>/<backbone>/")
    parser.add_argument("--models", type=Path, required=True, help="writes <models>/<backbone>/fold<k>.safetensors")
    parser.add_argument("--oof", type=Path, required=True, help="writes <oof>/<backbone>/fold<k>.npz")
    parser.add_argument("--live", type=Path, required=True, help="DVCLive folder <live>/<backbone>/fold<k>/")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    params = config.load_config(args.params)
    backbone = params.backbone(args.backbone)  # before any data is read
    config.check_registries(params)
    torchrun = distributed.torchrun_command(params.launcher.nproc_per_node, "stages.train", argv)
    if torchrun is not None:
        raise SystemExit(subprocess.run(torchrun).returncode)
    cfg = backbone.train
    data = dataset.load_dataset(args.data)
    fold_of_image, made_folds = folds.load_folds(args.folds, data.train_labels, params, data.made)
    feature_folder = layout.backbone_file(args.features, args.backbone, "")
    made_features = made_by(feature_folder, params, f"features@{args.backbone}", data=data.made)
    cached = None
    if cfg.cached_features:  # made from the frozen weights this stage starts from
        start = features.frozen_digest(features.initial_model(backbone.model, cfg), cfg.freeze_blocks)
        cached = features.load_features(made_features, frozen_weights=start).train
    split = folds.split_fold(data.train_images, data.train_labels, fold_of_image, args.fold, cached)
    record = record_of(params, f"train@{args.backbone}-{args.fold}", data=data.made, folds=made_folds,
                       features=made_features)  # fmt: skip
    model_path = layout.fold_file(args.models, args.backbone, args.fold, ".safetensors")
    world = distributed.join_world()  # one process, or one of torchrun's
    try:
        log = fold_log.FoldLog(layout.fold_file(args.live, args.backbone, args.fold, "")) if world.is_main else None
        result = training.train_one_fold(
            backbone.model, split, cfg, world, name=f"{args.backbone} fold {args.fold}", tta=params.tta,
            resume_path=model_path.with_name(model_path.name + ".resume.pt"), on_epoch=log.epoch if log else None,
        )  # fmt: skip
        if log is not None:
            log.finish(result.metrics)
        result.save(
            model_path=model_path, oof_path=layout.fold_file(args.oof, args.backbone, args.fold, ".npz"),
            backbone=backbone.model, valid_ids=split.valid_ids, image_size=cfg.image_size, record=record,
        )  # fmt: skip
    finally:
        distributed.leave_world()


if __name__ == "__main__":
    cli.run(main)
