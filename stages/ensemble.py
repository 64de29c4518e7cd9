"""Fit the ensemble on the backbones' OOF logits; write weights, test probabilities, metrics, report."""

import argparse
from pathlib import Path

import numpy as np

from pipeline import atomic, cli, config, dataset, ensemble, folds, layout, report, scores
from pipeline.provenance import arrays_digest, embed, made_by, record_of


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
    fold_of_image, made_folds = folds.load_folds(args.folds, data.train_labels, cfg, data.made)
    made_oof, made_test = [], []
    for bb in cfg.backbones:  # every fold's OOF logits from params.yaml's recipe; test logits from those models
        paths = [layout.fold_file(args.oof, bb, k, ".npz") for k in cfg.cv.folds]
        oof = [made_by(path, cfg, f"train@{bb}-{k}", data=data.made, folds=made_folds)
               for k, path in zip(cfg.cv.folds, paths, strict=True)]  # fmt: skip
        made_oof += oof
        made_test.append(made_by(layout.backbone_file(args.test_logits, bb, ".npz"), cfg, f"predict@{bb}",
                                 data=data.made, models=oof))  # fmt: skip
    oof_logits = np.stack([
        scores.load_oof([layout.fold_file(args.oof, bb, k, ".npz") for k in cfg.cv.folds], fold_of_image)
        for bb in cfg.backbones
    ])  # fmt: skip
    test_logits = np.stack([scores.load_scores(made.path, expected_ids=data.test_ids)[1] for made in made_test])
    result = ensemble.build_ensemble(
        cfg.ensemble.method, list(cfg.backbones), oof_logits, data.train_labels, fold_of_image, test_logits,
        temperature=cfg.ensemble.temperature, fallback=cfg.ensemble.fallback,
    )  # fmt: skip
    facts = {"probs": arrays_digest(result.test_probs), **result.summary()}
    record = record_of(cfg, "ensemble", facts, data=data.made, folds=made_folds, oof=made_oof, test_logits=made_test)
    atomic.write_json(args.weights_out, embed(result.weights_json(), record))
    scores.save_scores(args.probs_out, data.test_ids, result.test_probs, record=record)
    atomic.write_json(args.metrics_out, result.metrics)
    with atomic.atomic_dir(args.report_out) as tmp:
        report.write_report(tmp, backbones=list(cfg.backbones), oof_logits=oof_logits, labels=data.train_labels,
                            fold_of_image=fold_of_image, result=result, n_test=len(data.test_images))  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
