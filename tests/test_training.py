import numpy as np
import pytest
import torch

import pipeline.training
from pipeline.config import BackboneConfig
from pipeline.errors import PipelineError
from pipeline.folds import Split
from pipeline.training import train_one_fold
from tests.conftest import separable_images

CPU = torch.device("cpu")
CFG = BackboneConfig(epochs=3, batch_size=32, lr=3.0e-3, warmup_epochs=1, image_size=32, weights="scratch", seed=0)


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
        "test_efficientnet", make_split(), BackboneConfig(**{**CFG.__dict__, "epochs": 6}), CPU, name="t"
    )
    assert result.oof_logits.shape == (60, 10)
    assert result.metrics["accuracy"] > 0.5  # chance is 0.1
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5, 6]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_killed_run_resumes_and_ends_equal_to_an_uninterrupted_run(tmp_path, monkeypatch):
    split = make_split(96, 30)
    uninterrupted = train_one_fold("test_resnet", split, CFG, CPU, name="a", resume_path=tmp_path / "a.resume.pt")
    assert not (tmp_path / "a.resume.pt").exists()  # a finished run leaves only its outputs

    real_save = pipeline.training._save_resume

    def save_then_die(path, state, fingerprint, epochs_done, history):
        real_save(path, state, fingerprint, epochs_done, history)
        if epochs_done == 2:
            raise KeyboardInterrupt  # as a SIGKILL right after the epoch-2 checkpoint

    monkeypatch.setattr(pipeline.training, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_one_fold("test_resnet", split, CFG, CPU, name="a", resume_path=tmp_path / "b.resume.pt")
    assert (tmp_path / "b.resume.pt").exists()
    monkeypatch.setattr(pipeline.training, "_save_resume", real_save)

    resumed = train_one_fold("test_resnet", split, CFG, CPU, name="a", resume_path=tmp_path / "b.resume.pt")
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert np.array_equal(resumed.oof_logits, uninterrupted.oof_logits)
    assert not (tmp_path / "b.resume.pt").exists()


def test_resume_file_from_other_settings_is_not_used(tmp_path):
    split = make_split(64, 20)
    one_epoch = BackboneConfig(**{**CFG.__dict__, "epochs": 1})
    path = tmp_path / "x.resume.pt"
    torch.save({"fingerprint": {"name": "other"}, "epochs_done": 1, "history": []}, path)
    result = train_one_fold("test_resnet", split, one_epoch, CPU, name="x", resume_path=path)
    assert len(result.history) == 1 and not path.exists()


def test_diverging_loss_stops_naming_the_fold_and_epoch():
    huge_lr = BackboneConfig(**{**CFG.__dict__, "lr": 1.0e30, "warmup_epochs": 0})
    with pytest.raises(PipelineError, match=r"test_resnet fold 3 epoch 1: the training loss is (nan|inf)"):
        train_one_fold("test_resnet", make_split(), huge_lr, CPU, name="test_resnet fold 3")
