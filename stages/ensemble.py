"""Weight the backbones' softmax outputs on their OOF logits; write the weights, test probabilities, metrics."""

import argparse
from pathlib import Path

import numpy as np

from pipeline import atomic, cli, config, dataset, ensemble, scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--oof", type=Path, required=True, help="folder of <backbone>/fold<k>.npz")
    parser.add_argument("--test-logits", type=Path, required=True, help="folder of <backbone>.npz")
    parser.add_argument("--weights-out", type=Path, required=True)
    parser.add_argument("--probs-out", type=Path, required=True)
    parser.add_argument("--metrics-out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)

    cfg = config.load_config(args.params)
    labels = dataset.load_dataset(args.data).train_labels
    oof = np.stack([
        scores.load_oof([args.oof / bb / f"fold{k}.npz" for k in cfg.cv.folds], len(labels))
        for bb in cfg.backbones
    ])  # fmt: skip
    test = [scores.load_scores(args.test_logits / f"{bb}.npz") for bb in cfg.backbones]
    test_ids = test[0][0]
    result = ensemble.build_ensemble(
        cfg.ensemble.method, list(cfg.backbones), oof, labels, np.stack([logits for _, logits in test])
    )
    atomic.write_json(args.weights_out, result.weights)
    scores.save_scores(args.probs_out, test_ids, result.test_probs)
    atomic.write_json(args.metrics_out, result.metrics)


if __name__ == "__main__":
    cli.run(main)
