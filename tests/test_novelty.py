"""chapters/novelty.py: the training features' statistics, the distance, and the 'unlike training' flag in
every output."""
import json
import math
import re

import pandas as pd
import pytest
import torch
from PIL import Image

import evaluate
from chapters import novelty

# Six training images' features, about a mean of 0: x and z vary by 1/3 (variance), y by 4/3.
FEATURES = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 1], [0, 0, -1]],
                        dtype=torch.float64)


def test_statistics_and_distance_by_hand():
    # One direction kept: y, variance 4/3; the other two share the mean of theirs, 1/3.
    statistics = novelty.fit_statistics([FEATURES[:4], FEATURES[4:]], components=1)  # in two batches
    assert statistics["mean"].tolist() == [0.0, 0.0, 0.0]
    assert statistics["basis"].abs().tolist() == [[0.0, 1.0, 0.0]]
    assert statistics["variances"].tolist() == pytest.approx([4 / 3])
    assert statistics["residual_variance"] == pytest.approx(1 / 3)
    assert statistics["images"] == 6
    # (1, 2, 1): 2^2 / (4/3) = 3 along y, (1 + 1) / (1/3) = 6 across it: 9. (0, 1, 0): 1 / (4/3).
    distances = novelty.log_distance(torch.tensor([[1.0, 2.0, 1.0], [0.0, 1.0, 0.0]]), statistics)
    assert distances.tolist() == pytest.approx([math.log(9), math.log(0.75)])
    # Batch by batch or at once: the same.
    at_once = novelty.fit_statistics([FEATURES], components=1)
    assert at_once["variances"].tolist() == pytest.approx(statistics["variances"].tolist())


def test_cutoff_counted_on_held_out_distances_by_hand():
    # Nine held-out distances 1..9 leave ten gaps: the 9th smallest leaves one gap of ten above it.
    distances = [5.0, 1, 9, 3, 7, 2, 8, 4, 6]
    assert novelty.cutoff_by_counting(distances, 0.1) == (9.0, pytest.approx(0.1))
    assert novelty.cutoff_by_counting(distances, 0.2) == (8.0, pytest.approx(0.2))  # ceil(10 x 0.8)
    # Too few for 5 %: the largest, which promises only 1 in 10.
    assert novelty.cutoff_by_counting(distances, 0.05) == (9.0, pytest.approx(0.1))
    # Ten distances, 10 %: ceil(11 x 0.9) = 10, the largest, one gap of eleven above it (not the
    # 9th, as counting n x 0.9 of them would say: then two gaps of eleven, 18 %).
    assert novelty.cutoff_by_counting(range(1, 11), 0.1) == (10.0, pytest.approx(1 / 11))
    # Nineteen distances, 10 %: the 18th smallest, two gaps of twenty above it.
    assert novelty.cutoff_by_counting(range(1, 20), 0.1) == (18.0, pytest.approx(0.1))


def test_stage_features_by_hand(tmp_path):
    # The baseline's four stages (16, 32, 64 and 128 channels), each averaged over the image, side
    # by side: 240 numbers of length 1 together.
    from model import build_model

    model = build_model("baseline")
    Image.new("RGB", (8, 8)).save(tmp_path / "any.png")  # read, then replaced by the image below
    table = pd.DataFrame({"load_path": [str(tmp_path / "any.png")], "label": [0]})
    image = torch.rand(1, 3, 32, 32)
    outputs = []
    for module in novelty.stage_ends(model):
        module.register_forward_hook(lambda _, __, output: outputs.append(output.mean(dim=(2, 3))))
    model.eval()
    with torch.no_grad():
        model(image)
    expected = torch.cat(outputs, 1).double()
    assert expected.shape == (1, 240)
    batches = list(novelty.feature_batches(model, table, lambda _: image[0], "cpu"))
    assert len(batches) == 1
    assert batches[0].norm().item() == pytest.approx(1.0)
    assert torch.allclose(batches[0], expected / expected.norm(), atol=1e-6)


def test_the_flag_reaches_report_predict_and_image(trained_baseline, tmp_path, monkeypatch, capsys):
    from conftest import run_main

    checkpoint, data = trained_baseline
    recorded = torch.load(checkpoint, weights_only=True)["novelty"]
    # The synthetic set's validation images: too few for 1 %, so the largest of their distances.
    assert recorded["held_out"] < 99
    assert recorded["cutoff"] > 0
    assert recorded["members"][0]["basis"].shape == (novelty.COMPONENTS, 240)  # 16 + 32 + 64 + 128
    assert run_main(evaluate, checkpoint, "--out", tmp_path / "report", monkeypatch=monkeypatch) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    predictions = pd.read_csv(tmp_path / "report" / "predictions.csv")
    assert metrics["unlike_training"] == predictions["unlike_training"].sum()
    assert (predictions["unlike_training"] == (predictions["distance_from_training"] > recorded["cutoff"])).all()
    assert metrics["unlike_training"] <= 0.1 * metrics["n"]  # images like the training ones, mostly not flagged
    # Pictures that are not skin: stripes and flat green, beside two of the test lesions.
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (64, 64), (20, 200, 40)).save(folder / "green.png")
    Image.frombytes("L", (64, 64), bytes((x // 4 % 2) * 255 for _ in range(64) for x in range(64))).convert(
        "RGB").save(folder / "stripes.png")
    lesions = pd.read_csv(data / "labels.csv").query("split == 'test'").head(2)
    for path in lesions["image_path"]:
        Image.open(data / path).save(folder / f"lesion-{len(list(folder.iterdir()))}.png")
    assert run_main(evaluate, checkpoint, "--predict", folder, "--out", tmp_path / "predict",
                    monkeypatch=monkeypatch) == 0
    assert pd.read_csv(tmp_path / "predict" / "submission.csv").columns.tolist() == ["isic_id", "target"]
    flags = pd.read_csv(tmp_path / "predict" / "predictions.csv").set_index("isic_id")["unlike_training"]
    assert flags.to_dict() == {"green": 1, "lesion-2": 0, "lesion-3": 0, "stripes": 1}
    capsys.readouterr()
    assert run_main(evaluate, checkpoint, "--image", folder / "stripes.png", "--out", tmp_path / "one",
                    monkeypatch=monkeypatch) == 0
    assert re.search(r"WARNING: this image is unlike any the model learnt from", capsys.readouterr().out)
