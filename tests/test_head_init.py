"""`train.head_init: probe`: the new head is a logistic regression on the model's pooled features, set before
anything copies the model, and training starts from it."""

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import pipeline.training
from pipeline.batches import to_model_input
from pipeline.config import TrainConfig
from pipeline.distributed import World
from pipeline.features import load_features, write_features
from pipeline.folds import Split
from pipeline.head_init import PROBE_C, PooledFeatures, init_head_from_probe
from pipeline.models import create_backbone, input_spec
from pipeline.provenance import Record, expect
from pipeline.recipe import build_recipe
from pipeline.training import train_one_fold
from tests.conftest import separable_images

CPU = torch.device("cpu")
MODEL = "test_efficientnet"
CFG = TrainConfig(epochs=1, batch_size=32, lr=3.0e-3, warmup_epochs=0, image_size=32, weights="scratch", seed=0,
                  head_init="probe")  # fmt: skip


def make_split(n_train=120, n_valid=60) -> Split:
    images, labels = separable_images(n_train + n_valid)
    return Split(images[:n_train], labels[:n_train], images[n_train:], labels[n_train:],
                 np.arange(n_train, n_train + n_valid) + 1)  # fmt: skip


def pooled_by_hand(model, images) -> np.ndarray:
    """timm's pre-logits of the image and its mirror, averaged: what the probe is fitted on."""
    spec = input_spec(model)
    batch = torch.from_numpy(images)
    with torch.no_grad():
        views = [model.forward_head(model.forward_features(to_model_input(v, 32, spec)), pre_logits=True)
                 for v in (batch, batch.flip(2))]  # fmt: skip
    return ((views[0] + views[1]) / 2).numpy()


def test_the_probe_head_is_a_logistic_regression_on_the_pooled_features():
    torch.manual_seed(0)
    model = create_backbone(MODEL, "scratch").eval()
    split = make_split()
    accuracy = init_head_from_probe(model, split, CFG, CPU)
    x = pooled_by_hand(model, split.train_images)
    expected = LogisticRegression(C=PROBE_C, max_iter=1000).fit(x, split.train_labels)
    np.testing.assert_allclose(model.classifier.weight.detach().numpy(), expected.coef_, atol=1e-3)
    np.testing.assert_allclose(model.classifier.bias.detach().numpy(), expected.intercept_, atol=1e-3)
    assert accuracy == pytest.approx(expected.score(x, split.train_labels))


def test_pooled_features_from_cached_features_equal_those_from_the_images(tmp_path):
    torch.manual_seed(0)
    model = create_backbone(MODEL, "scratch").eval()
    images, _ = separable_images(24)
    write_features(tmp_path / "f", model, 3, 32, images, images[:1], batch_size=8, device=CPU, record=Record("f"))
    cached = load_features(expect(tmp_path / "f", "f")).train
    with torch.no_grad():
        from_cache = PooledFeatures(model, 3)(torch.from_numpy(np.array(cached[:, 0])).float()).numpy()
        spec = input_spec(model)
        from_images = PooledFeatures(model)(to_model_input(torch.from_numpy(images), 32, spec)).numpy()
    np.testing.assert_allclose(from_cache, from_images, rtol=0, atol=1e-2 * np.abs(from_images).max())


def test_the_head_is_set_before_the_ema_copy_and_the_optimizer_trains_it():
    cfg = dataclasses.replace(CFG, ema_decay=0.9)

    def constant_head(model):
        model.classifier.weight.data.fill_(0.5)

    recipe = build_recipe(MODEL, cfg, 120, World(), init_head=constant_head)
    assert torch.all(recipe.ema.module.classifier.weight == 0.5)
    trained = {id(p) for group in recipe.optimizer.param_groups for p in group["params"]}
    assert id(recipe.model.classifier.weight) in trained


@pytest.mark.parametrize("head_init", ["probe", "random"])
def test_the_first_update_starts_from_the_probe_head(head_init, monkeypatch):
    split, seen = make_split(), {}
    real_train_epoch = pipeline.training.train_epoch

    def first_epoch_sees(recipe, *args, **kwargs):
        if not seen:  # the head the first update starts from, and the probe of the model as it is then
            x = pooled_by_hand(recipe.model.eval(), split.train_images)
            seen["head"] = recipe.model.classifier.weight.detach().numpy().copy()
            seen["probe"] = LogisticRegression(C=PROBE_C, max_iter=1000).fit(x, split.train_labels).coef_
        return real_train_epoch(recipe, *args, **kwargs)

    monkeypatch.setattr(pipeline.training, "train_epoch", first_epoch_sees)
    train_one_fold(MODEL, split, dataclasses.replace(CFG, head_init=head_init), World(), name="t")
    assert np.allclose(seen["head"], seen["probe"], atol=1e-3) == (head_init == "probe")
