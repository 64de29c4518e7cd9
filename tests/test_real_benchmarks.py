"""benchmarks/real_accuracy.py and learning_curve.py: the images they hold out, the files they read, the probes
they beat, the subsets they train on and the law they extrapolate with."""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import atomic, ensemble, scores
from pipeline.competition import CLASSES, id_label_csv_text

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("learning_curve"), importlib.import_module("real_accuracy")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_fit_recovers_the_law_the_points_were_drawn_from_and_its_interval_holds_the_truth(bench):
    curve, _ = bench
    n = np.array([667.0, 1333.0, 2507.0])
    truth = curve.PowerLaw(0.73, 0.23, np.zeros((2, 2)))
    law = curve.fit_power_law(n, [truth.accuracy(x) for x in n], n_scored=900)
    assert law.a == pytest.approx(0.73, rel=1e-3) and law.b == pytest.approx(0.23, rel=1e-3)
    low, high = law.interval(33_333)
    assert low < truth.accuracy(33_333) < high
    assert law.accuracy(33_333) == pytest.approx(1 - 0.73 * 33_333**-0.23, abs=1e-4)  # 0.9336


def test_fewer_scored_images_widen_the_interval(bench):
    curve, _ = bench
    n, accuracy = np.array([667.0, 1333.0, 2507.0]), [0.838, 0.857, 0.879]
    widths = []
    for n_scored in (100, 900, 10_000):
        low, high = curve.fit_power_law(n, accuracy, n_scored).interval(33_333)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] > 0


def test_a_smaller_train_part_keeps_every_held_out_image_and_each_class_share(bench, tmp_path):
    _, real = bench
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 30)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    npz = tmp_path / "real.npz"
    np.savez(npz, images=images, labels=labels, classes=np.array(CLASSES))
    full = real.build_competition(npz, tmp_path / "full.zip", n_heldout=50, n_junk=10, seed=0)
    part = real.build_competition(npz, tmp_path / "part.zip", n_heldout=50, n_junk=10, seed=0, n_train=100)
    np.testing.assert_array_equal(part["heldout_images"], full["heldout_images"])
    np.testing.assert_array_equal(part["heldout_test_ids"], full["heldout_test_ids"])
    assert len(part["train_labels"]) == 100
    assert np.bincount(part["train_labels"]).tolist() == [10] * len(CLASSES)
    full_rows = {image.tobytes() for image in full["train_images"]}
    assert all(image.tobytes() in full_rows for image in part["train_images"])


def test_the_benchmark_reads_the_held_out_accuracy_from_what_the_stages_write(bench, tmp_path):
    _, real = bench
    rng = np.random.default_rng(0)
    n_classes, train_labels = len(CLASSES), np.arange(60) % len(CLASSES)
    fold_of_image = np.arange(60) % 3
    oof = rng.normal(size=(2, 60, n_classes)).astype(np.float32)
    oof[0, np.arange(60), train_labels] += 3.0  # backbone a is right on most OOF images, b on fewer
    oof[1, np.arange(60), train_labels] += 1.0
    test_ids, heldout_ids, heldout_labels = np.arange(1, 21), np.array([3, 7, 11, 15]), np.array([0, 1, 2, 3])
    test_logits = np.zeros((2, 20, n_classes), dtype=np.float32)
    test_logits[0, heldout_ids - 1, [0, 1, 2, 9]] = 5.0  # a: 3 of 4 held-out images right
    test_logits[1, heldout_ids - 1, [0, 1, 8, 9]] = 1.0  # b: 2 of 4
    result = ensemble.build_ensemble("equal", ["a", "b"], oof, train_labels, fold_of_image, test_logits)
    artifacts = tmp_path / "artifacts"
    atomic.write_json(artifacts / "metrics" / "ensemble.json", result.metrics)
    for name, logits in zip(("a", "b"), test_logits, strict=True):
        scores.save_scores(artifacts / "test_logits" / f"{name}.npz", test_ids, logits)
    (artifacts / "submission.csv").write_text(id_label_csv_text(test_ids, result.test_probs.argmax(1)))

    data = {"heldout_test_ids": heldout_ids, "heldout_labels": heldout_labels}
    rows, methods = real.pipeline_results(tmp_path, data)
    assert rows["a"]["heldout"] == 0.75 and rows["b"]["heldout"] == 0.5
    submitted = result.metrics["submitted"]
    expected = float(np.mean(result.test_probs.argmax(1)[heldout_ids - 1] == heldout_labels))
    assert rows[f"ensemble ({submitted})"] == {
        "oof": result.metrics["methods"][submitted]["accuracy"],
        "nested_cv": result.metrics["cv_accuracy"],
        "heldout": expected,
    }
    assert rows["a"]["oof"] == result.metrics["backbones"]["a"]["accuracy"] and set(methods) >= {"equal", "best"}


def test_the_probes_are_the_recipes_backbones_at_the_size_each_trains_at(bench):
    _, real = bench
    settings = [
        "train.image_size=96",
        "~backbones",
        "train.image_size=160",
        "+backbones={a: {model: tf_efficientnet_lite0}, b: {model: tf_efficientnet_lite1, image_size: 64}}",
    ]
    assert real.profile_probes(settings) == ["tf_efficientnet_lite0@160", "tf_efficientnet_lite1@64"]
