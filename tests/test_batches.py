import logging

import numpy as np
import pytest
import torch

from pipeline.batches import InputSpec, autocast_dtype, pick_device, random_crop_flip, to_device, to_model_input


def test_crop_without_padding_only_flips_and_flips_about_half():
    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), dtype=np.uint8))
    out = random_crop_flip(batch, padding=0, generator=torch.Generator().manual_seed(0))
    same = (out == batch).flatten(1).all(1)
    flipped = (out == batch.flip(2)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 60 < int(flipped.sum()) < 140


def test_crop_with_padding_is_a_shifted_window_of_the_reflect_padded_image():
    image = torch.arange(32 * 32 * 3, dtype=torch.int32).reshape(1, 32, 32, 3) % 251
    batch = image.to(torch.uint8).repeat(50, 1, 1, 1)
    out = random_crop_flip(batch, padding=4, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(image.permute(0, 3, 1, 2).float(), (4,) * 4, mode="reflect")
    padded = padded.to(torch.uint8).permute(0, 2, 3, 1)[0]
    windows = {(dy, dx): padded[dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)}
    for crop in out:
        assert any(torch.equal(crop, w) or torch.equal(crop, w.flip(1)) for w in windows.values())
    assert len({crop.numpy().tobytes() for crop in out}) > 10  # different images get different crops


def test_same_generator_seed_same_augmentation():
    batch = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    a = random_crop_flip(batch, 4, torch.Generator().manual_seed(7))
    b = random_crop_flip(batch, 4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_model_input_is_resized_normalised_and_channels_last():
    batch = torch.full((2, 32, 32, 3), 255, dtype=torch.uint8)
    batch[:, :, :, 1] = 0
    x = to_model_input(batch, 64, InputSpec(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 0.5)))
    assert x.shape == (2, 3, 64, 64)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[:, 0], torch.tensor(2.0)) and torch.allclose(x[:, 1], torch.tensor(-1.0))


def test_cpu_branch_of_device_helpers():
    device = pick_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu) is None  # bf16 is slow on CPUs: fp32 there
    images = np.zeros((3, 32, 32, 3), np.uint8)
    assert to_device(images, cpu).dtype == torch.uint8 and to_device(images, cpu).shape == (3, 32, 32, 3)
    scaler = torch.amp.GradScaler("cpu", enabled=autocast_dtype(cpu) == torch.float16)
    assert not scaler.is_enabled()


def test_a_cuda_build_that_finds_no_gpu_says_so_once_and_uses_the_cpu(monkeypatch, caplog):
    import pipeline.batches as batches

    batches._warn_no_gpu.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(batches, "nvidia_driver_present", lambda: True)  # a GPU machine whose driver is too old
    with caplog.at_level(logging.WARNING, logger="pipeline.batches"):
        devices = [batches.pick_device(), batches.pick_device()]
    assert devices == [torch.device("cpu")] * 2
    assert len(caplog.records) == 1
    assert (
        caplog.records[0]
        .getMessage()
        .startswith(
            f"torch {torch.__version__} is built for CUDA 12.4 but finds no usable GPU, so this runs on the CPU"
        )
    )


def test_a_cuda_build_on_a_machine_without_an_nvidia_driver_uses_the_cpu_without_a_warning(
    monkeypatch, caplog, tmp_path
):
    import pipeline.batches as batches

    batches._warn_no_gpu.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(batches, "DRIVER_SIGNS", (str(tmp_path / "no-proc-entry"), str(tmp_path / "no-device")))
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    with caplog.at_level(logging.WARNING, logger="pipeline.batches"):
        assert batches.pick_device() == torch.device("cpu")
    assert caplog.records == []  # a CPU box (CI, this one): nothing is wrong
    (tmp_path / "no-device").touch()  # the driver's control device: a GPU machine whose CUDA torch cannot use
    assert batches.nvidia_driver_present()


@pytest.mark.parametrize(
    ("capability", "dtype", "scaled"),
    [((6, 0), torch.float16, True), ((7, 0), torch.float16, True), ((7, 5), torch.float16, True),
     ((8, 0), torch.bfloat16, False), ((8, 9), torch.bfloat16, False), ((9, 0), torch.bfloat16, False)],
    ids=["P100", "V100", "T4", "A100", "L4", "H100"],
)  # fmt: skip
def test_mixed_precision_is_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, capability, dtype, scaled):
    """The CPU twin of a GPU: its compute capability, as torch reports it. torch's own is_bf16_supported() says
    True on a T4 (it counts emulation), which would train there in slow emulated bf16 without a GradScaler."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # as on a T4
    assert autocast_dtype(torch.device("cuda")) == dtype
    assert (autocast_dtype(torch.device("cuda")) == torch.float16) == scaled  # what build_recipe's GradScaler reads


def test_a_cpu_build_uses_the_cpu_without_a_warning_and_a_gpu_is_used_when_found(monkeypatch, caplog):
    import pipeline.batches as batches

    batches._warn_no_gpu.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with caplog.at_level(logging.WARNING, logger="pipeline.batches"):
        assert batches.pick_device() == torch.device("cpu")
    assert caplog.records == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert batches.pick_device() == torch.device("cuda")
    assert torch.backends.cudnn.benchmark  # autotuned in every CUDA process: train, features and predict alike
