"""Fit the ensemble on the backbones' OOF logits; write weights, test probabilities, metrics, report."""

import argparse
from pathlib import Path

import numpy as np

from pipeline import atomic, cli, config, dataset, ensemble, folds, layout, report, scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--folds", type=Path, required=True)
    parser.add_argument("--oof", type=Path, required=True, help="folder of <backbone>/fold<k>.npz")
    parser.add_argument("--test-logits", type=Path, required=True, help="folder of <backbone>.npz")
    parser.add_argument("--weights-out", type=Path, required=True)
    parser.add_argument("--probs-out", type=Path, required=True)
    parser.add_argument("--metrics-out", type=Path, required=True)
    parser.add_argument("--report-out", type=Path, required=True, help="folder for report.md, figures, plot data")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params)
    data = dataset.load_dataset(args.data)
    fold_of_image = folds.read_folds(args.folds, data.train_labels, cfg.cv.n_folds)
    oof = np.stack([
        scores.load_oof([layout.fold_file(args.oof, bb, k, ".npz") for k in cfg.cv.folds], fold_of_image)
        for bb in cfg.backbones
    ])  # fmt: skip
    test = np.stack([
        scores.load_scores(layout.backbone_file(args.test_logits, bb, ".npz"), expected_ids=data.test_ids)[1]
        for bb in cfg.backbones
    ])  # fmt: skip
    result = ensemble.build_ensemble(
        cfg.ensemble.method, list(cfg.backbones), oof, data.train_labels, fold_of_image, test,
        temperature=cfg.ensemble.temperature, fallback=cfg.ensemble.fallback,
    )  # fmt: skip
    atomic.write_json(args.weights_out, result.weights_json())
    scores.save_scores(args.probs_out, data.test_ids, result.test_probs)
    atomic.write_json(args.metrics_out, result.metrics)
    with atomic.atomic_dir(args.report_out) as tmp:
        report.write_report(tmp, backbones=list(cfg.backbones), oof_logits=oof, labels=data.train_labels,
                            fold_of_image=fold_of_image, result=result, n_test=len(data.test_images))  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
