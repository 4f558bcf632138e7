"""The metadata as evidence: age, sex and body site read, cleaned, fused with the image model, reported."""
import json
import math
import re

import pandas as pd
import pytest
import torch

import evaluate
import prepare_data
import train
from conftest import make_image, run_main
from chapters.metadata import (LateFusion, evidence_columns, fit_late_fusion, fused_probabilities, logistic_regression,
                               metadata_encoding, metadata_features, metadata_shift, note)
from dataset import read_split
from model import load_checkpoint


def prepare(monkeypatch, source, out, *extra):
    assert run_main(prepare_data, "--source", source, "--out", out, *extra, monkeypatch=monkeypatch) == 0
    return pd.read_csv(out / "labels.csv")


# --- Reading: one vocabulary, odd values missing -------------------------------------------------------

def test_ham10000_metadata_is_cleaned_into_one_vocabulary(tmp_path, monkeypatch, capsys):
    ages = ["45", "", "NA", "-5", "130", "unknown", "80", "0"]
    sexes = ["male", "female", "unknown", "MALE", " Female ", "", "x", "m"]
    sites = ["back", "scalp", "unknown", "trunk", "acral", "Mars", "", "lower extremity"]
    rows = []
    for i, (age, sex, site) in enumerate(zip(ages, sexes, sites)):
        for shot in range(2):
            make_image(tmp_path / "ham" / "images" / f"ISIC_{i}{shot}.jpg", colour=(i * 20, shot * 90, 60))
            rows.append({"lesion_id": f"HAM_{i}{shot}", "image_id": f"ISIC_{i}{shot}", "dx": ["nv", "mel"][shot],
                         "dx_type": "histo", "age": age, "sex": sex, "localization": site})
    pd.DataFrame(rows).to_csv(tmp_path / "ham" / "HAM10000_metadata.csv", index=False)
    table = prepare(monkeypatch, tmp_path / "ham", tmp_path / "out", "--test-only").set_index("isic_id")
    first_shots = table.loc[[f"ISIC_{i}0" for i in range(len(ages))]]
    assert first_shots["age"].tolist()[:1] == [45] and first_shots["age"].tolist()[6:] == [80, 0]
    assert first_shots["age"].iloc[1:6].isna().all()  # empty, NA, negative, over 120, a word
    assert first_shots["sex"].fillna("-").tolist() == ["male", "female", "-", "male", "female", "-", "-", "male"]
    assert first_shots["site"].fillna("-").tolist() == ["posterior torso", "head/neck", "-", "torso", "palms/soles",
                                                       "-", "-", "lower extremity"]
    assert "dx_type" not in table  # how the diagnosis was confirmed is a label, never a feature
    assert "metadata missing, of 16 images: age 10, sex 6, site 6" in capsys.readouterr().out


def test_the_archive_and_its_older_export_speak_the_same_words(tmp_path, monkeypatch):
    for name, site_column in (("new", "anatom_site_general"), ("old", "anatom_site_general_challenge")):
        rows = []
        for i in range(8):
            make_image(tmp_path / name / f"ISIC_{i:07d}.jpg", colour=(i * 25, 100, 50))
            rows.append({"isic_id": f"ISIC_{i:07d}", "diagnosis_1": ["Benign", "Malignant"][i % 2],
                         "diagnosis_confirm_type": "histopathology", "age_approx": 40 + 5 * i,
                         "sex": "female", site_column: ["posterior torso", "head/neck"][i % 2]})
        pd.DataFrame(rows).to_csv(tmp_path / name / "metadata.csv", index=False)
    new = prepare(monkeypatch, tmp_path / "new", tmp_path / "new-out", "--test-only")
    old = prepare(monkeypatch, tmp_path / "old", tmp_path / "old-out", "--test-only")
    columns = ["isic_id", "age", "sex", "site"]
    assert new[columns].equals(old[columns])
    assert set(new["site"]) == {"posterior torso", "head/neck"} and set(new["age"]) == {40 + 5 * i for i in range(8)}


def test_isic_2024_measurements_are_evidence_and_its_leaks_are_not(tmp_path, monkeypatch):
    rows = []
    for i in range(12):
        make_image(tmp_path / "2024" / "train-image" / "image" / f"ISIC_{i:07d}.jpg", colour=(i * 20, 120, 90))
        rows.append({"isic_id": f"ISIC_{i:07d}", "target": i % 2, "patient_id": f"IP_{i % 4}", "age_approx": "NA",
                     "sex": "male", "anatom_site_general": "anterior torso", "clin_size_long_diam_mm": 3 + i,
                     "tbp_lv_areaMM2": 2.5 * i, "tbp_lv_location": "Left Leg", "lesion_id": f"L{i}",
                     "tbp_lv_dnn_lesion_confidence": 99.0 * (i % 2), "iddx_full": "Benign", "mel_thick_mm": 0.4})
    pd.DataFrame(rows).to_csv(tmp_path / "2024" / "train-metadata.csv", index=False)
    table = prepare(monkeypatch, tmp_path / "2024", tmp_path / "out", "--test-only")
    assert evidence_columns(table) == ["age", "sex", "site", "clin_size_long_diam_mm", "tbp_lv_areaMM2"]
    assert table["age"].isna().all() and table["tbp_lv_areaMM2"].tolist() == [2.5 * i for i in range(12)]


def test_a_leaky_column_changes_no_prediction(tmp_path, monkeypatch):
    """Columns that record the diagnosis (here, each holding the answer) are never read: the same images with
    those columns scrambled give the same labels.csv, the same model and the same predictions."""
    predictions = []
    for name, leak in (("leaky", lambda i, label: label), ("scrambled", lambda i, label: (i * 7) % 2)):
        rows = []
        for i in range(60):
            label = int(i % 3 == 0)
            make_image(tmp_path / name / "images" / f"ISIC_{i:07d}.jpg", colour=(i * 4, 90 + 60 * label, 60))
            rows.append({"lesion_id": f"HAM_{i}", "image_id": f"ISIC_{i:07d}", "dx": ["nv", "mel"][label],
                         "dx_type": ["follow_up", "histo"][leak(i, label)], "age": 30 + i % 40, "sex": "female",
                         "localization": ["back", "face"][i % 2]})
        pd.DataFrame(rows).to_csv(tmp_path / name / "HAM10000_metadata.csv", index=False)
        prepare(monkeypatch, tmp_path / name, tmp_path / f"{name}-data", "--val-fraction", 0.3, "--test-fraction", 0.3)
        checkpoint = tmp_path / f"{name}.pt"
        assert run_main(train, "--data", tmp_path / f"{name}-data", "--img-size", 32, "--epochs", 2,
                        "--out", checkpoint, monkeypatch=monkeypatch) == 0
        assert run_main(evaluate, checkpoint, "--out", tmp_path / f"{name}-report", monkeypatch=monkeypatch) == 0
        predictions.append(pd.read_csv(tmp_path / f"{name}-report" / "predictions.csv"))
    leaky_labels = pd.read_csv(tmp_path / "leaky-data" / "labels.csv").drop(columns=["image_path", "cached_path"],
                                                                          errors="ignore")
    scrambled_labels = pd.read_csv(tmp_path / "scrambled-data" / "labels.csv").drop(
        columns=["image_path", "cached_path"], errors="ignore")
    assert leaky_labels.equals(scrambled_labels)
    assert predictions[0]["probability_malignant"].tolist() == predictions[1]["probability_malignant"].tolist()


# --- Encoding: numbers, one-hot words, NaN for whatever is unknown ------------------------------------------

def test_metadata_features_by_hand():
    training = pd.DataFrame({"age": [40, None, 70], "sex": ["female", "male", None],
                             "site": ["posterior torso", "head/neck", "posterior torso"]})
    encoding = metadata_encoding(training)
    assert encoding["features"] == ["age", "sex: female", "sex: male", "site: head/neck", "site: posterior torso",
                                    "site: torso"]
    scored = pd.DataFrame({"age": [55, None], "sex": ["male", "other"], "site": ["torso", "palms/soles"]})
    features = metadata_features(scored, encoding).tolist()
    assert features[0] == [55, 0, 1, 0, 0, 1]  # a plain "torso" lights the torso column alone
    assert all(math.isnan(value) for value in features[1])  # no age; a sex and a site never seen in training
    # A collection without a column (ISIC UDA has no site) scores with that column unknown.
    assert all(math.isnan(v) for v in metadata_features(pd.DataFrame({"age": [30]}), encoding)[0, 1:].tolist())
    assert metadata_encoding(pd.DataFrame({"age": [None, None]})) is None


def test_a_measurement_relative_to_the_patients_other_lesions_by_hand():
    # Patient a's lesions measure 2, 4 and 6 mm: mean 4, standard deviation 2, so -1, 0 and +1 of its own sd.
    # Patient b's two lesions are alike and patient c has one: nothing to compare with, so missing.
    table = pd.DataFrame({"clin_size_long_diam_mm": [2, 4, 6, 10, 10, 7], "patient": ["a", "a", "a", "b", "b", "c"]})
    encoding = metadata_encoding(table)
    assert encoding["features"] == ["clin_size_long_diam_mm", "clin_size_long_diam_mm vs patient"]
    relative = metadata_features(table, encoding)[:, 1].tolist()
    assert relative[:3] == pytest.approx([-1, 0, 1]) and all(math.isnan(value) for value in relative[3:])
    # Computed on the images being scored: the same lesion is ordinary among a new patient's larger moles.
    scored = pd.DataFrame({"clin_size_long_diam_mm": [6, 8, 10], "patient_id": ["d", "d", "d"]})
    assert metadata_features(scored, encoding)[:, 1].tolist() == pytest.approx([-1, 0, 1])


# --- The fusion: a logistic regression, by hand -------------------------------------------------------------

def test_logistic_regression_finds_the_rates_of_a_table_by_hand():
    # One 0/1 input: 2 malignant of 8 where it is 0, 6 of 8 where it is 1. Unpenalised, the fit must give
    # each group its own rate: bias = log-odds of 2/8 = log(1/3), bias + weight = log-odds of 6/8 = log 3.
    inputs = torch.tensor([[0.0]] * 8 + [[1.0]] * 8)
    labels = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0] + [1, 1, 1, 1, 1, 1, 0, 0])
    bias, weight = logistic_regression(inputs, labels, torch.zeros(2), torch.tensor([1e-9, 1e-9])).tolist()
    assert bias == pytest.approx(math.log(1 / 3), abs=1e-5) and weight == pytest.approx(2 * math.log(3), abs=1e-5)
    # A strong pull towards the prior keeps the weight there, whatever the data says.
    _, held = logistic_regression(inputs, labels, torch.tensor([0.0, 0.5]), torch.tensor([1e-9, 1e9])).tolist()
    assert held == pytest.approx(0.5, abs=1e-6)


def test_late_fusion_by_hand_and_a_missing_feature_moves_nothing():
    fusion = {"features": ["age"], "vocabulary": {}, "centre": [50.0], "scale": [10.0], "weights": [0.8],
              "bias": -0.2}
    image = torch.tensor([0.5, 0.8, 0.8])
    fused = LateFusion(fusion)(image, torch.tensor([[70.0], [50.0], [math.nan]])).tolist()
    expected_70 = 1 / (1 + math.exp(-(0 + 0.8 * 2 - 0.2)))  # log-odds of 0.5 is 0; age 70 is 2 sd up
    assert fused[0] == pytest.approx(expected_70, abs=1e-6)
    assert fused[1] == pytest.approx(1 / (1 + math.exp(-(math.log(4) - 0.2))), abs=1e-6)  # 0.8: odds of 4
    assert fused[1] == pytest.approx(fused[2], abs=1e-7)  # unknown age counts as the average age


def test_the_metadata_is_learnt_on_every_label_and_the_bias_on_held_out_images():
    # Age decides these 40 labelled images (45 and over: malignant); the image model knows nothing (0.5 for
    # each of its 20 held-out validation images, of which 8 are malignant).
    ages = list(range(20, 60))
    table = pd.DataFrame({"isic_id": [f"i{age}" for age in ages], "split": ["train", "val"] * 20, "age": ages,
                          "label": [int(age >= 45) for age in ages]})
    held_out = table[table["split"] == "val"]
    checkpoint = {"val_predictions": {"isic_id": held_out["isic_id"].tolist(), "image_probability": [0.5] * 20,
                                      "label": held_out["label"].tolist()}}
    fusion, fused_held_out = fit_late_fusion(checkpoint, table, strength=1.0)
    assert fusion["features"] == ["age"] and (fusion["fitted_on"], fusion["bias_fitted_on"]) == (40, 20)
    assert fusion["centre"] == [pytest.approx(39.5)] and fusion["weights"][0] > 1  # older: more often malignant
    # The bias is a logistic regression's: on the images it is fitted on, the predicted malignant add up to
    # the malignant there are.
    fused = LateFusion(fusion)(torch.full((20,), 0.5), torch.tensor(held_out[["age"]].values, dtype=torch.float32))
    assert fused.sum().item() == pytest.approx(8, abs=1e-4)
    assert fused_held_out == pytest.approx(fused.tolist(), abs=1e-6)  # what evaluate.py will score


def site_odds_ratio(images_per_site, **strengths):
    """The odds ratio the fusion learns between two sites: on the back 3 in 4 lesions malignant, on the
    face 1 in 4 (9 in truth), the image model knowing nothing (0.5 for each)."""
    quarter = images_per_site // 4
    table = pd.DataFrame({"site": ["posterior torso"] * images_per_site + ["head/neck"] * images_per_site,
                          "label": [1] * (3 * quarter) + [0] * quarter + [1] * quarter + [0] * (3 * quarter)})
    table = table.assign(isic_id=[f"i{row}" for row in table.index], split="train")
    checkpoint = {"val_predictions": {"isic_id": table["isic_id"].tolist(), "image_probability": [0.5] * len(table),
                                      "label": table["label"].tolist()}}
    fusion, _ = fit_late_fusion(checkpoint, table, **strengths)
    back, face = fused_probabilities(fusion, [0.5, 0.5], pd.DataFrame({"site": ["posterior torso", "head/neck"]}))
    return back / (1 - back) / (face / (1 - face))


def test_a_word_must_prove_more_than_age_and_many_images_do_prove_it():
    # Held as age's, 40 images already learn most of the 9; held 100 times harder (the default), 40 images
    # hardly move it, and 4,000 do learn it: the penalty is a sum beside the data's.
    assert site_odds_ratio(20, word_strength=1.0) > 6
    assert site_odds_ratio(20) < 1.3
    assert site_odds_ratio(2000) > 6


# --- End to end: trained by default, carried in the checkpoint, reported ------------------------------------

def test_the_checkpoint_carries_its_fusion_and_the_metadata_helps(trained_baseline, tmp_path, monkeypatch, capsys):
    checkpoint, data = trained_baseline
    info = torch.load(checkpoint, weights_only=True)
    fusion = info["fusion"]
    assert fusion["features"][:3] == ["age", "sex: female", "sex: male"]
    assert fusion["fitted_on"] == len(read_split(data, "train")) + len(read_split(data, "val"))
    assert fusion["bias_fitted_on"] == len(read_split(data, "val"))
    assert len(fusion["centre"]) == len(fusion["scale"]) == len(fusion["weights"]) == len(fusion["features"])
    # The synthetic malignant lesions come older and more often on the back: the fusion learnt both.
    weight = dict(zip(fusion["features"], fusion["weights"]))
    assert weight["age"] > 0 and weight["site: posterior torso"] > 0
    # The threshold is chosen on what is scored: the fused validation predictions, kept beside the image model's.
    assert info["val_predictions"]["fused_probability"] != info["val_predictions"]["image_probability"]
    assert (checkpoint.with_name("baseline-metadata.png")).exists()
    assert run_main(evaluate, checkpoint, "--out", tmp_path / "r", monkeypatch=monkeypatch) == 0
    assert re.search(r"metadata used: age \(known for \d+ of \d+\), sex .*, site", capsys.readouterr().out)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["auc"] > metrics["auc_image_alone"] + 0.01, metrics


def test_no_metadata_trains_the_image_model_alone(synthetic_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "plain.pt"
    assert run_main(train, "--data", synthetic_data, "--img-size", 32, "--epochs", 1, "--no-metadata", "--out", out,
                    monkeypatch=monkeypatch) == 0
    assert "fusion" not in torch.load(out, weights_only=True)
    assert run_main(evaluate, out, "--out", tmp_path / "r", monkeypatch=monkeypatch) == 0
    assert "metadata: not used" in capsys.readouterr().out
    predictions = pd.read_csv(tmp_path / "r" / "predictions.csv")
    assert predictions["probability_malignant"].equals(predictions["probability_image_alone"])


def test_data_without_metadata_still_scores_with_a_note(trained_baseline, tmp_path, monkeypatch, capsys):
    checkpoint, data = trained_baseline
    labels = pd.read_csv(data / "labels.csv").query("split == 'test'").head(20)
    bare = tmp_path / "bare"
    bare.mkdir()
    labels.drop(columns=["age", "sex", "site"]).assign(image_path=[str(data / p) for p in labels["image_path"]]) \
        .to_csv(bare / "labels.csv", index=False)
    assert run_main(evaluate, checkpoint, "--data", bare, "--out", tmp_path / "r", monkeypatch=monkeypatch) == 0
    assert "note: this data has no age, sex, site; the models score it from the images" in capsys.readouterr().out
    predictions = pd.read_csv(tmp_path / "r" / "predictions.csv")
    fusion = load_checkpoint(checkpoint)[1]["fusion"]
    unknown = fused_probabilities(fusion, predictions["probability_image_alone"].tolist(),
                                  pd.DataFrame(index=range(20)))
    assert predictions["probability_malignant"].tolist() == pytest.approx(unknown, abs=1e-6)


def test_one_image_takes_its_metadata_on_the_command_line(trained_baseline, tmp_path, monkeypatch, capsys):
    checkpoint, data = trained_baseline
    image = data / pd.read_csv(data / "labels.csv")["image_path"][0]

    def probability(*metadata):
        assert run_main(evaluate, checkpoint, "--image", image, *metadata, "--out", tmp_path,
                        monkeypatch=monkeypatch) == 0
        output = capsys.readouterr().out
        return float(re.search(r"P\(malignant\) = (\S+) ->", output).group(1)), output

    young, _ = probability("--age", 20, "--sex", "female", "--site", "head/neck")
    old, _ = probability("--age", 80, "--sex", "female", "--site", "back")  # HAM10000's word for posterior torso
    _, output = probability("--age", "unknown", "--site", "elbow")
    assert old > young
    assert "--age 'unknown' is not a value the models know" in output and "--site 'elbow'" in output
    assert "note: this data has no age, sex, site" in output


def test_metadata_unlike_the_training_sets_is_named_by_hand():
    # Trained on ages 50 +- 10 and as many women as men; scored on two women of 80 and one of 55.
    fusion = {"features": ["age", "sex: female", "sex: male"], "vocabulary": {"sex": ["female", "male"]},
              "centre": [50.0, 0.5, 0.5], "scale": [10.0, 1.0, 1.0]}
    scored = pd.DataFrame({"age": [80, 80, 55], "sex": ["female", "female", "female"]})
    assert metadata_shift(fusion, scored) == ["age 71.7 on average against 50",
                                              "sex: female 100% of the known values against 50%",
                                              "sex: male 0% of the known values against 50%"]
    alike = pd.DataFrame({"age": [45, 58, None], "sex": ["female", "male", "unknown"]})
    assert metadata_shift(fusion, alike) == []  # within a standard deviation; half and half
    assert metadata_shift(fusion, pd.DataFrame(index=range(3))) == []  # nothing known: nothing to compare
    # A site word training never saw is scored as unknown: named when it is common here.
    fusion = {"features": ["site: head/neck"], "vocabulary": {"site": ["head/neck"]}, "centre": [1.0],
              "scale": [1.0]}
    scored = pd.DataFrame({"site": ["head/neck"] * 3 + ["palms/soles"] + [None] * 6})
    assert metadata_shift(fusion, scored) == ["site: palms/soles 25% of the known values, never seen in training"]
    assert metadata_shift(fusion, scored.assign(site=["head/neck"] * 9 + ["palms/soles"])) == []  # 10 %
    assert note([fusion], scored.assign(age=[50] * 10)).endswith(
        "metadata used: site (known for 4 of 10); never in the training data, so ignored: age")


def test_the_report_warns_when_the_scored_metadata_is_unlike_the_training_sets(trained_baseline, tmp_path,
                                                                                monkeypatch, capsys):
    checkpoint, data = trained_baseline
    assert run_main(evaluate, checkpoint, "--out", tmp_path / "same", monkeypatch=monkeypatch) == 0
    assert "warning" not in capsys.readouterr().out  # its own test split: drawn as its training set was
    labels = pd.read_csv(data / "labels.csv").query("split == 'test'")
    moved = tmp_path / "moved"
    moved.mkdir()
    labels.assign(site="head/neck", image_path=[str(data / p) for p in labels["image_path"]]) \
        .to_csv(moved / "labels.csv", index=False)
    assert run_main(evaluate, checkpoint, "--data", moved, "--out", tmp_path / "r", monkeypatch=monkeypatch) == 0
    output = capsys.readouterr().out
    assert re.search(r"warning: this metadata is unlike the training set's \(.*site: head/neck 100% of the "
                     r"known values against \d+%", output), output
    assert "compare the AUC of the images alone" in output


def test_a_clinic_refits_the_fusion_on_its_own_labels(trained_baseline, tmp_path, monkeypatch, capsys):
    # A clinic whose patients turn the training priors round: its malignant lesions are of the young.
    checkpoint, data = trained_baseline
    labels = pd.read_csv(data / "labels.csv").query("split == 'test'")
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    labels.assign(age=[25 if label else 75 for label in labels["label"]],
                  image_path=[str(data / p) for p in labels["image_path"]]).to_csv(clinic / "labels.csv", index=False)

    def report(*extra):
        assert run_main(evaluate, checkpoint, "--data", clinic, "--threshold-from", clinic, *extra,
                        "--out", tmp_path / "r", monkeypatch=monkeypatch) == 0
        return json.loads((tmp_path / "r" / "metrics.json").read_text())

    trained, refitted = report(), report("--refit-fusion")
    assert f"the metadata's fusion refitted on the {len(labels)} images of" in capsys.readouterr().out
    assert trained["auc"] < trained["auc_image_alone"]  # the training set's priors mislead here
    assert refitted["auc"] > trained["auc_image_alone"] + 0.02  # its own labels learnt the clinic's
    assert run_main(evaluate, checkpoint, "--refit-fusion", monkeypatch=monkeypatch) == 2
    assert "--refit-fusion needs --threshold-from" in capsys.readouterr().err
