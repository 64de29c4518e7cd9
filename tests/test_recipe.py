"""The recipe's GPU branches through their CPU twins: layer decay per backbone, SyncBatchNorm, DDP wrapping."""

import subprocess
from pathlib import Path

import pytest
import timm
import torch
import yaml

from pipeline.config import TrainConfig
from pipeline.distributed import World
from pipeline.recipe import build_recipe, layer_decay_for, layer_groups, sync_batchnorm_if_needed

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
