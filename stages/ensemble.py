"""Weight the backbones' softmax outputs on their OOF logits; write weights, test probabilities, metrics, report."""

import argparse
from pathlib import Path

import numpy as np

from pipeline import atomic, cli, config, dataset, ensemble, folds, report, scores


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
    oof = np.stack([
        scores.load_oof([args.oof / bb / f"fold{k}.npz" for k in cfg.cv.folds], len(data.train_labels))
        for bb in cfg.backbones
    ])  # fmt: skip
    test = [scores.load_scores(args.test_logits / f"{bb}.npz") for bb in cfg.backbones]
    fold_of_image = folds.read_folds(args.folds)
    result = ensemble.build_ensemble(
        cfg.ensemble.method, list(cfg.backbones), oof, data.train_labels, fold_of_image,
        np.stack([logits for _, logits in test]), temperature=cfg.ensemble.temperature,
        fallback=cfg.ensemble.fallback,
    )  # fmt: skip
    atomic.write_json(args.weights_out, {"weights": result.weights, "temperatures": result.temperatures})
    scores.save_scores(args.probs_out, test[0][0], result.test_probs)
    atomic.write_json(args.metrics_out, result.metrics)
    with atomic.atomic_dir(args.report_out) as tmp:
        report.write_report(tmp, backbones=list(cfg.backbones), oof_logits=oof, labels=data.train_labels,
                            fold_of_image=fold_of_image, result=result, n_test=len(data.test_images))  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
