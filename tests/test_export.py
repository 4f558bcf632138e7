"""evaluate.py --export: the model as one ONNX graph that ONNX Runtime runs from its metadata_props alone (the
README's example, run here as written), ranking images as --predict --no-tta does; and its refusals."""
import contextlib
import io
import json
import re
import shutil
import sys

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
import torch
from PIL import Image, ImageOps

import evaluate
from conftest import ROOT, make_isic_2024, prepare_and_train, run_main
from chapters.metadata import metadata_features
from chapters.onnx_export import export_onnx
from chapters.unlabelled import prediction_table
from dataset import CustomDataset, build_transforms
from helpers.images import read_bytes
from model import load_checkpoint


def readme_example():
    """The README's ONNX Runtime example: the python block after its onnx-example marker."""
    text = (ROOT / "README.md").read_text()
    return re.search(r"<!-- onnx-example.*?-->\n```python\n(.*?)```", text, re.S).group(1)


def run_readme_example(folder, onnx_file, image):
    """The README's example run as written, on this image: the probability it prints."""
    shutil.copy(onnx_file, folder / "model.onnx")
    shutil.copy(image, folder / "lesion.jpg")
    printed = io.StringIO()
    with contextlib.chdir(folder), contextlib.redirect_stdout(printed):
        exec(readme_example(), {})
    return float(re.search(r"P\(malignant\) = ([0-9.]+)", printed.getvalue()).group(1))


def predict_no_tta(checkpoint, path, out, monkeypatch):
    assert run_main(evaluate, checkpoint, "--predict", path, "--no-tta", "--out", out, monkeypatch=monkeypatch) == 0
    return pd.read_csv(out / "submission.csv")


def test_readme_example_scores_images_as_predict_no_tta(trained_baseline, tmp_path, monkeypatch):
    checkpoint, data = trained_baseline
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((data / "images").rglob("*.jpg"))[:12]:
        shutil.copy(path, images / path.name)
    assert run_main(evaluate, checkpoint, "--export", tmp_path / "baseline.onnx", monkeypatch=monkeypatch) == 0
    props = {p.key: p.value for p in onnx.load(tmp_path / "baseline.onnx").metadata_props}
    assert props["image_size"] == "64" and "metadata_features" in props  # the synthetic set has age, sex, site
    expected = predict_no_tta(checkpoint, images, tmp_path / "out", monkeypatch)
    got = [run_readme_example(tmp_path, tmp_path / "baseline.onnx", images / f"{image_id}.jpg")
           for image_id in expected["isic_id"]]
    assert max(abs(a - b) for a, b in zip(got, expected["target"])) < 2e-3  # printed to 3 decimals
    assert expected["target"].nunique() > 6  # the ranking below compares something
    assert pd.Series(got).rank().corr(expected["target"].rank()) > 0.99


def test_fold_ensemble_with_metadata_matches_predict(tmp_path, monkeypatch):
    # A cross-validated model that weighs ISIC 2024's measurements: its ONNX graph, fed the images and the
    # metadata features of test-metadata.csv, gives --predict --no-tta's submission.
    root = make_isic_2024(tmp_path / "isic2024", count=36, patients=9, test_count=10)
    checkpoint = prepare_and_train(root, tmp_path, "folds", "--epochs", 1, "--folds", 2, monkeypatch=monkeypatch)
    assert run_main(evaluate, checkpoint, "--export", tmp_path / "folds.onnx", monkeypatch=monkeypatch) == 0
    expected = predict_no_tta(checkpoint, root / "test-metadata.csv", tmp_path / "out", monkeypatch)

    _, info = load_checkpoint(checkpoint)
    table = prediction_table(root / "test-metadata.csv")
    transform = build_transforms(info["img_size"], train=False, mean=info["mean"], std=info["std"])
    images = torch.stack([image for image, _ in CustomDataset(table, transform)])
    session = onnxruntime.InferenceSession(tmp_path / "folds.onnx")
    props = session.get_modelmeta().custom_metadata_map
    assert props["metadata_features"] == str(info["fusion"]["features"]).replace("'", '"')
    assert "2 cross-validation models" in props["model"]
    features = metadata_features(table, info["fusion"])
    assert not features.isnan().all()  # the sizes and measurements are there
    got = session.run(None, {"image": images.numpy(), "metadata": features.numpy()})[0]
    assert abs(torch.tensor(got) - torch.tensor(expected["target"])).max() < 1e-4
    # And from the props alone, as the README does it: the same images as files, their metadata unknown.
    folder = tmp_path / "images"
    folder.mkdir()
    for image_id, address in zip(table["isic_id"], table["load_path"]):
        (folder / f"{image_id}.jpg").write_bytes(read_bytes(address))
    expected = predict_no_tta(checkpoint, folder, tmp_path / "out", monkeypatch)
    got = [run_readme_example(tmp_path, tmp_path / "folds.onnx", folder / f"{image_id}.jpg")
           for image_id in expected["isic_id"]]
    assert max(abs(a - b) for a, b in zip(got, expected["target"])) < 2e-3


class CountsItsCalls(torch.nn.Module):
    """A network whose output depends on a Python counter: the trace keeps the first call's value, so the
    graph and the network disagree from the second call on, as a wrongly traced network would."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return images.flatten(1).mean(1).sigmoid() * self.calls / 2


def test_a_graph_that_disagrees_with_pytorch_is_not_kept(tmp_path):
    path = tmp_path / "wrong.onnx"
    with pytest.raises(ValueError, match="differ from PyTorch's by up to .* not written"):
        export_onnx(CountsItsCalls(), {"image": torch.rand(3, 3, 8, 8)}, {}, path)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_export_refusals(trained_baseline, tmp_path, monkeypatch, capsys):
    checkpoint, _ = trained_baseline
    assert run_main(evaluate, checkpoint, checkpoint, "--export", tmp_path / "two.onnx", monkeypatch=monkeypatch) == 2
    assert "--export writes one checkpoint" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    assert run_main(evaluate, checkpoint, "--export", tmp_path / "m.onnx", monkeypatch=monkeypatch) == 2
    assert "pip install -r requirements-onnx.txt" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def score_from_props(session, path, round_longer_side=False):
    """P(malignant) of one image, fed as the ONNX file's `resize` prop says, word for word, and nothing
    else: the way an app written in another language would do it. (round_longer_side: the mistake
    the prop guards against, 171 px where it says 170.)"""
    props = session.get_modelmeta().custom_metadata_map
    size, mean, std = int(props["image_size"]), json.loads(props["mean"]), json.loads(props["std"])
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    short = min(image.size)
    longer = (lambda side: round(size * side / short)) if round_longer_side else \
        (lambda side: int(size * side / short))
    image = image.resize([size if side == short else longer(side) for side in image.size],
                         Image.BILINEAR)
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32) / 255
    inputs = {"image": ((pixels - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)}
    if "metadata_features" in props:
        inputs["metadata"] = np.full((1, len(json.loads(props["metadata_features"]))), np.nan, np.float32)
    return float(session.run(None, inputs)[0][0])


def test_the_resize_prop_alone_reproduces_predict(trained_baseline, tmp_path, monkeypatch):
    # Oblong photos, as real ones are (200x150 as HAM10000's; 150x201, whose resized side is odd, so
    # that the crop's offset ends in a half): the prop says how the longer side and the offsets round.
    checkpoint, data = trained_baseline
    assert run_main(evaluate, checkpoint, "--export", tmp_path / "m.onnx", monkeypatch=monkeypatch) == 0
    props = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert "int(image_size * longer / shorter)" in props["resize"] and "round((width" in props["resize"]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, path in enumerate(sorted((data / "images").glob("*.jpg"))[:10]):
        shape = (200, 150) if i % 2 else (150, 201)
        Image.open(path).resize(shape, Image.BICUBIC).save(folder / path.name, quality=95)
    expected = predict_no_tta(checkpoint, folder, tmp_path / "out", monkeypatch)
    session = onnxruntime.InferenceSession(tmp_path / "m.onnx")
    paths = [folder / f"{image_id}.jpg" for image_id in expected["isic_id"]]
    got = [score_from_props(session, path) for path in paths]
    assert max(abs(a - b) for a, b in zip(got, expected["target"])) < 1e-4
    shifted = [score_from_props(session, path, round_longer_side=True) for path in paths]
    assert max(abs(a - b) for a, b in zip(shifted, expected["target"])) > 1e-4  # so the rule matters
