"""Run one backbone's frozen blocks once over every labelled and test image and its mirror (`train.cached_features`).

Writes `<out>/<backbone>/`: the features and their record, or, for a backbone without `cached_features`, a
record saying so (its train and predict stages then read images).
"""

import argparse
from pathlib import Path

from pipeline import batches, cli, config, dataset, features, layout
from pipeline.provenance import record_of


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", required=True, help="a name listed in params.yaml's backbones")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="writes <out>/<backbone>/")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    params = config.load_config(args.params)
    backbone = params.backbone(args.backbone)
    folder = layout.backbone_file(args.out, args.backbone, "")
    data = dataset.load_dataset(args.data)
    record = record_of(params, f"features@{args.backbone}", data=data.made)
    cfg = backbone.train
    if not cfg.cached_features:
        features.write_not_cached(folder, record)
        return
    config.check_registries(params)
    features.write_features(
        folder, features.initial_model(backbone.model, cfg), cfg.freeze_blocks, cfg.image_size, data.train_images,
        data.test_images, record=record, batch_size=params.predict.batch_size, device=batches.pick_device(),
        compile=cfg.compile,
    )  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
