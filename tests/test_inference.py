import numpy as np
import torch

from pipeline.batches import InputSpec, to_model_input
from pipeline.inference import predict_logits, shifted
from pipeline.models import create_backbone

SPEC = InputSpec((0.5,) * 3, (0.5,) * 3)
KW = {"image_size": 32, "spec": SPEC, "device": torch.device("cpu")}


def test_logits_do_not_depend_on_batch_size_and_hflip_is_the_mean_of_both_views():
    torch.manual_seed(0)
    model = create_backbone("test_efficientnet", "scratch").eval()
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    plain = predict_logits(model, images, batch_size=3, hflip=False, **KW)
    assert plain.shape == (10, 10) and plain.dtype == np.float32
    assert np.allclose(plain, predict_logits(model, images, batch_size=10, hflip=False, **KW), atol=1e-5)
    mirrored = predict_logits(model, images[:, :, ::-1], batch_size=4, hflip=False, **KW)
    with_tta = predict_logits(model, images, batch_size=4, hflip=True, **KW)
    assert np.allclose(with_tta, (plain + mirrored) / 2, atol=1e-5)
    # so a mirrored image gets exactly the same TTA logits, hence the same label
    assert np.allclose(predict_logits(model, images[:, :, ::-1], batch_size=4, hflip=True, **KW), with_tta, atol=1e-5)


def test_model_sees_the_same_input_as_to_model_input():
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    predict_logits(model, images, batch_size=2, hflip=False, **KW)
    expected = to_model_input(torch.from_numpy(images), 32, SPEC)
    assert torch.equal(seen[0], expected)


def test_shift_views_move_the_image_and_are_averaged():
    image = torch.arange(32 * 32 * 3, dtype=torch.int64).reshape(1, 32, 32, 3) % 256
    moved = shifted(image.to(torch.uint8), 2, 0)
    assert torch.equal(moved[0, 2:], image[0, :30].to(torch.uint8))  # down by 2 rows
    assert torch.equal(moved[0, 0], image[0, 2].to(torch.uint8)) and torch.equal(
        moved[0, 1], image[0, 1].to(torch.uint8)
    )
    torch.manual_seed(0)
    model = create_backbone("test_efficientnet", "scratch").eval()
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with_shift = predict_logits(model, images, batch_size=4, hflip=True, shift=2, **KW)
    batch = torch.from_numpy(images)
    views = [batch, batch.flip(2), *(shifted(batch, dy, dx) for dy, dx in ((2, 0), (-2, 0), (0, 2), (0, -2)))]
    expected = np.mean([predict_logits(model, v.numpy(), batch_size=4, hflip=False, **KW) for v in views], axis=0)
    assert np.allclose(with_shift, expected, atol=1e-5)


def test_compiled_inference_compiles_once_however_many_images_the_last_batch_holds(monkeypatch):
    """Static shapes: the last, partial batch is padded to the others' size instead of compiling another graph."""
    from torch._dynamo.testing import CompileCounter

    import pipeline.batches

    counter, real = CompileCounter(), torch.compile
    monkeypatch.setattr(pipeline.batches.torch, "compile", lambda module, **kw: real(module, backend=counter, **kw))
    torch._dynamo.reset()
    model = create_backbone("test_resnet", "scratch").eval()
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    compiled = predict_logits(model, images, batch_size=4, hflip=True, compile=True, **KW)  # batches of 4, 4, 2
    assert counter.frame_count == 1
    eager = predict_logits(model, images, batch_size=4, hflip=True, **KW)
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    assert compiled.shape == (10, 10)  # the padding rows are dropped
