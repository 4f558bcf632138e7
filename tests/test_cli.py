"""The scripts as a user runs them: separate processes, files passed between steps."""
import json

import pandas as pd
import torch
from PIL import Image

from conftest import make_image, run_script

METRIC_KEYS = {"accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auc", "pauc_80",
               "confusion_matrix", "n"}


def assert_is_a_real_picture(path, min_size=(300, 300)):
    image = Image.open(path)
    assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
    assert len(image.convert("RGB").getcolors(maxcolors=100000) or range(100000)) > 10, "blank picture"


def test_whole_pipeline_from_the_command_line(tmp_path):
    data, checkpoint, report = tmp_path / "data", tmp_path / "baseline.pt", tmp_path / "report"
    step = run_script("prepare_data.py", "--source", "synthetic", "--out", data, "--synthetic-count", 120,
                      "--synthetic-size", 48)
    assert step.returncode == 0, step.stderr
    assert "train" in step.stdout and "total" in step.stdout  # the table of counts

    step = run_script("train.py", "--data", data, "--img-size", 48, "--epochs", 2, "--out", checkpoint)
    assert step.returncode == 0, step.stderr
    assert "epoch   2/2" in step.stdout and "images/s" in step.stdout and "val AUC" in step.stdout

    step = run_script("evaluate.py", checkpoint, "--data", data, "--split", "test", "--out", report)
    assert step.returncode == 0, step.stderr
    assert "balanced accuracy" in step.stdout and "ROC AUC" in step.stdout
    metrics = json.loads((report / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    test_rows = pd.read_csv(data / "labels.csv").query("split == 'test'")
    assert metrics["n"] == len(test_rows)
    assert sum(map(sum, metrics["confusion_matrix"])) == len(test_rows)
    predictions = pd.read_csv(report / "predictions.csv")
    assert list(predictions.columns[:3]) == ["isic_id", "probability_malignant", "label"]
    assert predictions["isic_id"].tolist() == test_rows["isic_id"].tolist()
    assert predictions["probability_malignant"].between(0, 1).all()
    assert_is_a_real_picture(report / "confusion_matrix.png")
    assert_is_a_real_picture(report / "roc.png")
    assert_is_a_real_picture(report / "grad_cam.png", min_size=(3 * (2 * 48 + 12), 3 * (48 + 40)))

    step = run_script("evaluate.py", checkpoint, "--image", data / "images" / "SYN_00000.jpg", "--out", report)
    assert step.returncode == 0, step.stderr
    assert "SYN_00000.jpg: P(malignant) = 0." in step.stdout and "threshold" in step.stdout
    assert_is_a_real_picture(report / "grad_cam_SYN_00000.png", min_size=(48, 48))


def test_resnet_dry_run(tmp_path):
    data = tmp_path / "data"
    assert run_script("prepare_data.py", "--source", "synthetic", "--out", data, "--synthetic-count", 40,
                      "--synthetic-size", 32).returncode == 0
    step = run_script("train.py", "--data", data, "--model", "resnet", "--img-size", 32, "--dry-run",
                      "--out", tmp_path / "r.pt")
    assert step.returncode == 0, step.stderr
    assert "resnet: 11.2 M parameters" in step.stdout and "epoch   1/1" in step.stdout
    # The pretrained EfficientNet-Lite0 needs no network, and records the normalisation its weights expect.
    step = run_script("train.py", "--data", data, "--model", "efficientnet_lite0", "--pretrained", "--img-size", 32,
                      "--dry-run", "--out", tmp_path / "lite.pt")
    assert step.returncode == 0, step.stderr
    assert torch.load(tmp_path / "lite.pt", weights_only=True)["mean"] == (0.5, 0.5, 0.5)


def test_external_test_set_is_scored_with_a_model_trained_elsewhere(trained_baseline, tmp_path):
    checkpoint, _ = trained_baseline
    for i in range(10):
        make_image(tmp_path / "clinic" / ("malignant" if i % 2 else "benign") / f"lesion{i}.jpg",
                   colour=(100 + 12 * i, 70, 40), size=(90, 70))  # distinct files: not one image twice
    step = run_script("prepare_data.py", "--source", tmp_path / "clinic", "--out", tmp_path / "ext", "--test-only")
    assert step.returncode == 0, step.stderr
    step = run_script("evaluate.py", checkpoint, "--data", tmp_path / "ext", "--out", tmp_path / "rep")
    assert step.returncode == 0, step.stderr
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["n"] == 10


def test_bad_input_exits_with_code_2_and_a_message(tmp_path):
    step = run_script("train.py", "--data", tmp_path / "nowhere")
    assert step.returncode == 2
    assert "labels.csv not found; run prepare_data.py" in step.stderr and "Traceback" not in step.stderr
    (tmp_path / "fake.pt").write_bytes(b"garbage")
    step = run_script("evaluate.py", tmp_path / "fake.pt")
    assert step.returncode == 2
    assert "fake.pt is not a checkpoint" in step.stderr and "Traceback" not in step.stderr
    step = run_script("prepare_data.py", "--source", tmp_path / "absent")
    assert step.returncode == 2 and "does not exist" in step.stderr
