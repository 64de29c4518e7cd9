"""Fine-tune one timm backbone on one CV fold; save its weights, out-of-fold logits, metrics and curves.

Runs as one process (`python -m stages.train ...`) or as N under torchrun
(`torchrun --nproc_per_node=N -m stages.train ...`, plus the usual --nnodes/--rdzv-* flags across machines).
"""

import argparse
from pathlib import Path

from pipeline import cli, config, dataset, distributed, folds, models, training


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", required=True, help="timm name with optional tag, e.g. resnet18.a1_in1k")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--folds", type=Path, required=True)
    parser.add_argument("--model-out", type=Path, required=True)
    parser.add_argument("--oof-out", type=Path, required=True)
    parser.add_argument("--metrics-out", type=Path, required=True)
    parser.add_argument("--curves-out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params).train.for_backbone(args.backbone)
    models.check_backbone_name(args.backbone)  # before any data is read
    data = dataset.load_dataset(args.data)
    split = folds.split_fold(data.train_images, data.train_labels, folds.read_folds(args.folds), args.fold)
    world = distributed.join_world()  # one process, or one of torchrun's
    try:
        result = training.train_one_fold(
            args.backbone, split, cfg, world, name=f"{args.backbone} fold {args.fold}",
            resume_path=args.model_out.with_name(args.model_out.name + ".resume.pt"),
        )  # fmt: skip
        result.save(
            model_path=args.model_out, oof_path=args.oof_out, metrics_path=args.metrics_out,
            history_path=args.curves_out, backbone=args.backbone, valid_ids=split.valid_ids,
            image_size=cfg.image_size,
        )  # fmt: skip
    finally:
        distributed.leave_world()


if __name__ == "__main__":
    cli.run(main)
