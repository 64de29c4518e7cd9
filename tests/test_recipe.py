"""The recipe's GPU branches through their CPU twins (layer decay per backbone, SyncBatchNorm, DDP wrapping), and
frozen lower blocks."""

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

from pipeline.batches import InputSpec
from pipeline.config import TrainConfig
from pipeline.distributed import World
from pipeline.errors import PipelineError
from pipeline.folds import Split
from pipeline.recipe import build_recipe, layer_decay_for, layer_groups, set_head_only, sync_batchnorm_if_needed
from pipeline.training import train_epoch
from tests.conftest import separable_images

REPO = Path(__file__).resolve().parents[1]


def default_backbones() -> list[str]:
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True,
                               check=True)  # fmt: skip
    return [entry["model"] for entry in yaml.safe_load(committed.stdout)["backbones"].values()]


@pytest.mark.parametrize("backbone", [*default_backbones(), "test_efficientnet"])
@pytest.mark.parametrize("floor", [0.1, 0.5])
def test_the_lowest_layer_group_gets_the_floor_and_the_head_the_full_lr(backbone, floor):
    cfg = TrainConfig(weights="scratch", layer_decay_floor=floor, image_size=32)
    recipe = build_recipe(backbone, cfg, n_train=64, world=World())
    scales = sorted({round(group["lr_scale"], 12) for group in recipe.optimizer.param_groups})
    assert scales[0] == pytest.approx(floor) and scales[-1] == pytest.approx(1.0)
    assert len(scales) == layer_groups(recipe.model) > 2  # one geometric step per group


def test_layer_decay_adapts_to_the_group_count():
    shallow, deep = timm.create_model("test_resnet"), timm.create_model("tf_efficientnetv2_s")
    assert layer_groups(deep) > 2 * layer_groups(shallow)
    assert layer_decay_for(deep, 0.1) > layer_decay_for(shallow, 0.1)  # a gentler step over more groups
    assert layer_decay_for(deep, 1.0) is None  # off


def test_a_floor_of_one_gives_every_parameter_the_same_lr():
    recipe = build_recipe("test_resnet", TrainConfig(weights="scratch", image_size=32), 64, World())
    assert {group.get("lr_scale", 1.0) for group in recipe.optimizer.param_groups} == {1.0}


CUDA_DDP = World(rank=0, size=2, device=torch.device("cuda"))  # the branch taken on several GPUs


@pytest.mark.parametrize("backbone", [*default_backbones(), "test_efficientnet"])
def test_sync_batchnorm_keeps_every_activation(backbone):
    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False, num_classes=10).eval()
    for module in model.modules():  # non-trivial statistics, so that a dropped activation shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        converted = sync_batchnorm_if_needed(model, CUDA_DDP).eval()
        assert torch.allclose(converted(x), expected, atol=1e-5)
        if any(isinstance(m, timm.layers.BatchNormAct2d) for m in model.modules()):
            assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
            plain = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()  # what torch alone does
            assert not torch.allclose(plain(x), expected, atol=1e-3)


def test_one_process_or_the_cpu_keeps_plain_batchnorm():
    model = timm.create_model("test_efficientnet", pretrained=False)
    assert sync_batchnorm_if_needed(model, World()) is model
    assert sync_batchnorm_if_needed(model, World(size=2, device=torch.device("cpu"))) is model


def one_epoch(cfg: TrainConfig, backbone: str = "test_resnet"):
    """A recipe and its model's state before and after one epoch of `train_epoch` on a separable sample."""
    images, labels = separable_images(96)
    split = Split(images[:64], labels[:64], images[64:], labels[64:], np.arange(65, 97))
    recipe = build_recipe(backbone, cfg, len(split.train_images), World())
    before = {k: v.clone() for k, v in recipe.model.state_dict().items()}
    train_epoch(recipe, split, cfg, World(), 0, InputSpec((0.5,) * 3, (0.5,) * 3), name="t")
    return recipe, before, recipe.model.state_dict()


FROZEN_CFG = TrainConfig(epochs=2, batch_size=32, lr=3.0e-3, image_size=32, weights="scratch", warmup_epochs=0)


def test_frozen_blocks_keep_weights_and_batchnorm_statistics_while_the_rest_trains():
    cfg = dataclasses.replace(FROZEN_CFG, freeze_blocks=2)  # test_resnet: stem conv1, layer1..4, fc
    recipe, before, after = one_epoch(cfg)
    assert {k.split(".")[0] for k in recipe.frozen_names} == {"conv1", "bn1", "layer1", "layer2"}
    frozen = [k for k in before if k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))]
    assert any("running_mean" in k for k in frozen) and any(k.endswith("conv1.weight") for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    for key in ("layer3.0.conv1.weight", "layer4.0.conv1.weight", "fc.weight", "layer3.0.bn1.running_mean"):
        assert not torch.equal(before[key], after[key]), key
    optimised = {id(p) for group in recipe.optimizer.param_groups for p in group["params"]}
    assert all((id(p) in optimised) == (name not in recipe.frozen_names) for name, p in recipe.model.named_parameters())


def test_no_frozen_blocks_by_default_every_weight_and_statistic_trains():
    assert TrainConfig().freeze_blocks == 0
    recipe, before, after = one_epoch(FROZEN_CFG)
    assert recipe.frozen_names == frozenset() and recipe.frozen_modules == ()
    assert all(p.requires_grad for p in recipe.model.parameters())
    assert not torch.equal(before["conv1.0.weight"], after["conv1.0.weight"])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])


def test_blocks_frozen_all_along_stay_frozen_after_head_only_epochs():
    cfg = dataclasses.replace(FROZEN_CFG, freeze_blocks=1, head_epochs=1)
    recipe, _, _ = one_epoch(cfg)  # epoch 0: head only
    set_head_only(recipe, False, cfg, World())  # what epoch 1 does
    trainable = {name for name, p in recipe.model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in recipe.model.named_parameters()} - recipe.frozen_names
    assert "layer2.0.conv1.weight" in trainable and "layer1.0.conv1.weight" not in trainable


def test_freezing_more_blocks_than_the_model_has_says_how_many_it_has():
    with pytest.raises(PipelineError, match=r"freeze_blocks is 5, but .* has 4 blocks after its stem"):
        build_recipe("test_resnet", dataclasses.replace(FROZEN_CFG, freeze_blocks=5), 64, World())
    build_recipe("test_resnet", dataclasses.replace(FROZEN_CFG, freeze_blocks=4), 64, World())  # only the head trains


def test_the_ema_reaches_its_configured_decay_after_the_first_epoch_and_holds_it():
    """40,000 images in updates of 16 (2,500 an epoch, longer than the 1,000-update window of ema_decay 0.999)."""
    cfg = TrainConfig(weights="scratch", image_size=32, ema_decay=0.999, batch_size=16, epochs=10)
    ema = build_recipe("test_resnet", cfg, 40_000, World()).ema
    per_epoch = 2500
    assert ema.get_decay(per_epoch) == pytest.approx(0.999, abs=1e-6)
    assert ema.get_decay(5 * per_epoch) == 0.999  # mid-run: the configured decay, not timm's warm-up value (0.9970)
    assert 0.99 < ema.get_decay(per_epoch // 2) < 0.999  # still warming up in the first epoch
    # another setting gives another run: 0.9995 is reached, not capped by the warm-up at 0.9953 as before
    other = build_recipe("test_resnet", dataclasses.replace(cfg, ema_decay=0.9995), 40_000, World()).ema
    assert other.get_decay(5 * per_epoch) == 0.9995 != ema.get_decay(5 * per_epoch)


def test_an_epoch_shorter_than_the_ema_window_warms_up_as_the_mean_of_every_update():
    """The default fold (313 updates of 128 an epoch) with ema_decay 0.999: the decay is 1 - 1/t, the mean of all
    updates so far, until it reaches 0.999 at update 1,000; a faster warm-up would keep update 1 for good."""
    cfg = TrainConfig(weights="scratch", image_size=32, ema_decay=0.999, batch_size=128, epochs=10)
    ema = build_recipe("test_resnet", cfg, 40_000, World()).ema
    assert [ema.get_decay(t) for t in (2, 10, 313)] == pytest.approx([1 / 2, 9 / 10, 312 / 313])
    assert ema.get_decay(1000) == pytest.approx(0.999) and ema.get_decay(3 * 313 + 100) == 0.999
