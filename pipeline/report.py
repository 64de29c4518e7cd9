"""The run's report: a short markdown page with matplotlib figures, and the data behind `dvc plots show`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # noqa: E402

from pipeline.competition import CLASSES  # noqa: E402
from pipeline.ensemble import EnsembleResult  # noqa: E402
from pipeline.metrics import logits_metrics  # noqa: E402


def write_report(folder: Path, *, backbones: list[str], oof_logits: np.ndarray, labels: np.ndarray,
                 fold_of_image: np.ndarray, result: EnsembleResult, n_test: int) -> None:  # fmt: skip
    """Fill the empty `folder` with report.md, figures/*.png and plots/*.json (DVC plot data)."""
    (folder / "figures").mkdir()
    (folder / "plots").mkdir()
    predicted = result.oof_probs.argmax(1)
    matrix = confusion_matrix(labels, predicted, labels=range(len(CLASSES)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(len(CLASSES)), zero_division=0
    )
    # backbones' OOF accuracy is already honest; an ensemble's is not (stacking's least), so methods show nested CV
    accuracy_rows = [{"model": bb, "accuracy": result.metrics["backbones"][bb]["accuracy"]} for bb in backbones]
    accuracy_rows += [
        {"model": f"{name} (nested CV{', submitted' if name == result.method else ''})",
         "accuracy": m["nested_cv_accuracy"]}
        for name, m in result.metrics["methods"].items()
    ]  # fmt: skip

    pairs = zip(labels.tolist(), predicted.tolist(), strict=True)
    _dump(folder / "plots/confusion.json", [{"actual": CLASSES[a], "predicted": CLASSES[p]} for a, p in pairs])
    _dump(folder / "plots/per_class.json", [
        {"class": c, "precision": float(p), "recall": float(r), "f1": float(f)}
        for c, p, r, f in zip(CLASSES, precision, recall, f1, strict=True)
    ])  # fmt: skip
    _dump(folder / "plots/weights.json", [{"backbone": bb, "weight": w} for bb, w in result.weights.items()])
    _dump(folder / "plots/accuracy.json", accuracy_rows)

    _confusion_figure(matrix, folder / "figures/confusion.png")
    _bar_figure([c for c in CLASSES], f1, "F1 per class (OOF)", folder / "figures/per_class.png")
    _bar_figure(
        list(result.weights), list(result.weights.values()), _weight_label(result), folder / "figures/weights.png"
    )
    _bar_figure([r["model"] for r in accuracy_rows], [r["accuracy"] for r in accuracy_rows],
                "accuracy: backbones OOF, ensemble methods nested CV", folder / "figures/accuracy.png")  # fmt: skip

    fold_ids = np.unique(fold_of_image).tolist()
    lines = [
        "# CIFAR-10 run report",
        "",
        f"{len(labels)} labelled training images in {len(fold_ids)} folds; {n_test} test images.",
        "",
        "## Backbones (out-of-fold)",
        "",
        "| backbone | "
        + " | ".join(f"fold {k}" for k in np.unique(fold_of_image))
        + " | OOF accuracy | OOF log loss |",
        "|---|" + "---|" * len(np.unique(fold_of_image)) + "---|---|",
    ]
    for i, bb in enumerate(backbones):
        per_fold = [logits_metrics(oof_logits[i][fold_of_image == k], labels[fold_of_image == k])["accuracy"]
                    for k in np.unique(fold_of_image)]  # fmt: skip
        m = result.metrics["backbones"][bb]
        lines.append(
            f"| {bb} | " + " | ".join(f"{a:.4f}" for a in per_fold) + f" | {m['accuracy']:.4f} | {m['log_loss']:.4f} |"
        )
    lines += [
        "",
        "## Ensembles",
        "",
        "best, equal, fitted and caruana average the backbones' softmax outputs; stacking is a logistic regression"
        " on all of them. Nested CV fits each on k-1 folds and scores the held-out fold: the honest estimate.",
        "",
        "| method | OOF accuracy | OOF log loss | nested-CV accuracy | nested-CV log loss |",
        "|---|---|---|---|---|",
    ]
    for name, m in result.metrics["methods"].items():
        lines.append(f"| {name} | {m['accuracy']:.4f} | {m['log_loss']:.4f} | {m['nested_cv_accuracy']:.4f}"
                     f" | {m['nested_cv_log_loss']:.4f} |")  # fmt: skip
    best_single = result.metrics["methods"]["best"]["nested_cv_accuracy"]
    best_accuracy = result.metrics["backbones"][result.best_backbone]["accuracy"]
    chosen = result.metrics["methods"][result.method]
    gain = chosen["nested_cv_accuracy"] - best_single
    lines += [
        "",
        f"The submission uses **{result.method}**"
        + (
            f" (C = {result.stacking['C']:g}), each backbone's share of the coefficients' norm "
            if result.stacking
            else " weights "
        )
        + ", ".join(f"{bb} {w:.3f}" for bb, w in result.weights.items())
        + f". Nested-CV accuracy {chosen['nested_cv_accuracy']:.4f}, {gain:+.4f} against the best single backbone,"
        f" {result.best_backbone} (the highest OOF accuracy, {best_accuracy:.4f}; Kaggle scores accuracy, so log"
        " loss only breaks ties).",
        *[f"\n**Note:** {note}" for note in result.notes],
        "",
        "## Where it still fails",
        "",
        "Most confused class pairs (OOF, both directions):",
        "",
        *[f"- {a} / {b}: {n} images" for a, b, n in _most_confused(matrix)],
        "",
        "![OOF accuracy per backbone and ensemble](figures/accuracy.png)",
        "![Confusion matrix](figures/confusion.png)",
        "![F1 per class](figures/per_class.png)",
        "![Ensemble weights](figures/weights.png)",
        "",
    ]
    (folder / "report.md").write_text("\n".join(lines))


def _weight_label(result: EnsembleResult) -> str:
    return "share of the stacking coefficients' norm" if result.stacking else "ensemble weight"


def _most_confused(matrix: np.ndarray, top: int = 3) -> list[tuple[str, str, int]]:
    pairs = [(CLASSES[i], CLASSES[j], int(matrix[i, j] + matrix[j, i]))
             for i in range(len(CLASSES)) for j in range(i + 1, len(CLASSES))]  # fmt: skip
    return sorted(pairs, key=lambda pair: -pair[2])[:top]


def _dump(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, indent=1) + "\n")


def _confusion_figure(matrix: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if n > matrix.max() / 2 else "black")
    fig.colorbar(image)
    ax.set_title("OOF confusion matrix of the ensemble")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bar_figure(names: list[str], values, xlabel: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(names) + 1.2))
    ax.barh(names, values, color="tab:blue")
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.3f}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
