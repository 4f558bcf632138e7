"""evaluate.py --export: one ONNX graph that takes the image as decoded, any size, and scores it as --predict
--no-tta does, resize and metadata included (the README's example, run here as written); and its refusals."""
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
from PIL import Image

import evaluate
from chapters import onnx_export
from chapters.metadata import SEXES, SITES
from chapters.unlabelled import prediction_table
from conftest import ROOT, make_isic_2024, prepare_and_train, run_main
from helpers.images import load_image, read_bytes


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


def score(session, path, age="", sex="", site="", prevalence=np.nan, outputs=False):
    """P(malignant) of an image file from the graph alone: decoded as --predict decodes it, then one call, its
    metadata given as words (those the model does not know: -1, unknown); with outputs, every output."""
    feed = {"pixels": np.asarray(load_image(path)), "prevalence": np.array([prevalence], np.float32)}
    if "words" in (props := session.get_modelmeta().custom_metadata_map):
        words = json.loads(props["words"])
        sex, site = SEXES.get(sex.lower()), SITES.get(site.lower())
        feed.update(age=np.array([float(age) if age else np.nan], np.float32),
                    sex=np.array([words["sex"].index(sex) if sex in words["sex"] else -1]),
                    site=np.array([words["site"].index(site) if site in words["site"] else -1]))
    found = session.run(None, feed)
    return [float(output[0]) for output in found] if outputs else float(found[0][0])


def test_the_graph_alone_scores_photos_as_predict_no_tta(photos):
    # Oblong both ways, smaller than the model's 64 px, 4200 x 3000, grayscale, turned by EXIF, JPEG and PNG,
    # with and without age, sex and site: the graph does all --predict does but the decoding.
    onnx_file, folder, names, expected = photos
    session = onnxruntime.InferenceSession(onnx_file)
    metadata = pd.read_csv(folder / "metadata.csv", dtype=str, keep_default_na=False).set_index("isic_id")
    got = {name: score(session, folder / name, *metadata.loc[name.rsplit(".", 1)[0]]) for name in names}
    gaps = {name: abs(got[name] - expected[name.rsplit(".", 1)[0]]) for name in names}
    assert max(gaps.values()) < 1e-4, gaps
    assert max(expected.values()) - min(expected.values()) > 0.3  # the model tells these images apart
    assert {"large.jpg", "small_jpeg.jpg", "gray_png.png", "exif_6.jpg", "oblong_1.jpg"} <= set(names)
    # The metadata moves the probabilities: scored as unknown, they are not --predict's.
    unknown = [abs(score(session, folder / name) - expected[name.rsplit(".", 1)[0]]) for name in names]
    assert max(unknown) > 1e-3


def test_the_graph_gives_a_populations_probability_and_the_flag_as_predict_does(trained_baseline, tmp_path,
                                                                                monkeypatch):
    # --predict --no-tta --prevalence 0.02 and its predictions.csv (distance and flag) against the graph fed 0.02,
    # on two test lesions and two pictures that are not skin (flat green, stripes), which the flag must mark.
    checkpoint, data = trained_baseline
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), (20, 200, 40)).save(folder / "green.png")
    Image.frombytes("L", (64, 64), bytes((x // 4 % 2) * 255 for _ in range(64) for x in range(64))).convert(
        "RGB").save(folder / "stripes.png")
    for i, path in enumerate(pd.read_csv(data / "labels.csv").query("split == 'test'")["image_path"][:2]):
        shutil.copy(data / path, folder / f"lesion-{i}.jpg")
    assert run_main(evaluate, checkpoint, "--export", tmp_path / "m.onnx", monkeypatch=monkeypatch) == 0
    assert run_main(evaluate, checkpoint, "--predict", folder, "--no-tta", "--prevalence", 0.02, "--out",
                    tmp_path / "out", monkeypatch=monkeypatch) == 0
    predicted = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("isic_id")
    session = onnxruntime.InferenceSession(tmp_path / "m.onnx")
    assert [output.name for output in session.get_outputs()] == ["probability", "distance_from_training",
                                                                 "unlike_training"]
    for image in sorted(folder.iterdir()):
        probability, distance, flag = score(session, image, prevalence=0.02, outputs=True)
        row = predicted.loc[image.stem]
        assert probability == pytest.approx(row["probability_malignant"], abs=1e-4), image.name
        assert distance == pytest.approx(row["distance_from_training"], abs=1e-3), image.name
        assert flag == row["unlike_training"], image.name
    assert predicted.loc[["green", "stripes"], "unlike_training"].tolist() == [1, 1]
    # Fed NaN, the population is the one the model learnt from: 0.02 moved every probability down.
    own = score(session, folder / "lesion-0.jpg")
    assert own > predicted.loc["lesion-0", "probability_malignant"]


def test_readme_example_scores_images_as_predict_no_tta(trained_baseline, tmp_path, monkeypatch):
    checkpoint, data = trained_baseline
    images = tmp_path / "images"
    images.mkdir()
    ids = [path.stem for path in sorted((data / "images").rglob("*.jpg"))[:8]]
    for image_id in ids:
        shutil.copy(data / "images" / f"{image_id}.jpg", images / f"{image_id}.jpg")
    # The example's patient: 62, female, site unknown.
    pd.DataFrame({"isic_id": ids, "age": 62, "sex": "female"}).to_csv(images / "metadata.csv", index=False)
    assert run_main(evaluate, checkpoint, "--export", tmp_path / "baseline.onnx", monkeypatch=monkeypatch) == 0
    props = {p.key: p.value for p in onnx.load(tmp_path / "baseline.onnx").metadata_props}
    assert props["image_size"] == "64" and "female" in json.loads(props["words"])["sex"]
    expected = predict_no_tta(checkpoint, images / "metadata.csv", tmp_path / "out", monkeypatch)
    got = [run_readme_example(tmp_path, tmp_path / "baseline.onnx", images / f"{image_id}.jpg")
           for image_id in expected["isic_id"]]
    assert max(abs(a - b) for a, b in zip(got, expected["target"])) < 1e-3  # printed to 3 decimals
    assert expected["target"].nunique() > 4  # the comparison compares something


def test_fold_ensemble_matches_predict(tmp_path, monkeypatch):
    # A cross-validated model that weighs ISIC 2024's measurements: the graph leaves them unknown, as
    # --predict does for images that come without them.
    root = make_isic_2024(tmp_path / "isic2024", count=36, patients=9, test_count=10)
    checkpoint = prepare_and_train(root, tmp_path, "folds", "--epochs", 1, "--folds", 2, monkeypatch=monkeypatch)
    assert run_main(evaluate, checkpoint, "--export", tmp_path / "folds.onnx", monkeypatch=monkeypatch) == 0
    session = onnxruntime.InferenceSession(tmp_path / "folds.onnx")
    props = session.get_modelmeta().custom_metadata_map
    assert "2 cross-validation models" in props["model"] and "measurements" in props["metadata_inputs"]
    folder = tmp_path / "images"
    folder.mkdir()
    table = prediction_table(root / "test-metadata.csv")
    for image_id, address in zip(table["isic_id"], table["load_path"]):
        (folder / f"{image_id}.jpg").write_bytes(read_bytes(address))
    expected = predict_no_tta(checkpoint, folder, tmp_path / "out", monkeypatch)
    got = [score(session, folder / f"{image_id}.jpg") for image_id in expected["isic_id"]]
    assert max(abs(a - b) for a, b in zip(got, expected["target"])) < 1e-4


def test_a_graph_that_resizes_otherwise_than_pytorch_is_not_kept(trained_baseline, tmp_path, monkeypatch, capsys):
    # The longer side rounded (171 px for 200 x 150 at 128) rather than truncated, as torchvision does: the
    # check before the file is kept catches it.
    checkpoint, _ = trained_baseline
    resize_across = onnx_export.resize_across

    def rounded_up(graph, pixels, length, resized, start, size):
        return resize_across(graph, pixels, length, graph("Add", resized, 1), start, size)

    monkeypatch.setattr(onnx_export, "resize_across", rounded_up)
    assert run_main(evaluate, checkpoint, "--export", tmp_path / "wrong.onnx", monkeypatch=monkeypatch) == 2
    assert re.search(r"differ from PyTorch's by up to .* not written", capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_export_refusals(trained_baseline, tmp_path, monkeypatch, capsys):
    checkpoint, _ = trained_baseline
    assert run_main(evaluate, checkpoint, checkpoint, "--export", tmp_path / "two.onnx", monkeypatch=monkeypatch) == 2
    assert "--export writes one checkpoint" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    assert run_main(evaluate, checkpoint, "--export", tmp_path / "m.onnx", monkeypatch=monkeypatch) == 2
    assert "pip install -r requirements-onnx.txt" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_resize_is_torchvisions_byte_for_byte():
    # The preprocessing graph alone against torchvision's Resize and CenterCrop on random bytes, at sizes where
    # the weights, their integer precision and the crop's rounding all vary.
    import torch
    from torchvision.transforms import v2

    session = onnxruntime.InferenceSession(onnx_export.preprocessing_graph(64).SerializeToString())
    expected = v2.Compose([v2.Resize(64, antialias=True), v2.CenterCrop(64)])
    generator = np.random.default_rng(0)
    for shape in [(1, 1), (3, 700), (64, 64), (64, 67), (67, 64), (150, 201), (201, 150), (40, 30), (1000, 999)]:
        pixels = generator.integers(0, 256, (*shape, 3), dtype=np.uint8)
        want = expected(torch.from_numpy(pixels).permute(2, 0, 1)).numpy()[None]
        assert np.array_equal(session.run(None, {"pixels": pixels})[0], want), shape
