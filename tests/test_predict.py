"""evaluate.py --predict: a submission.csv for images without labels, from a metadata CSV, an HDF5 file or a
folder, scored exactly as evaluate.py scores a split; and every bad input stopping in one line."""
import shutil

import pandas as pd
import pytest

import evaluate
from conftest import jpeg_bytes, make_image, make_isic_2024, prepare_and_train, run_main, write_hdf5
from chapters.metadata import fused_probabilities
from train import roc_auc
from model import load_checkpoint


def test_kaggle_folder_to_submission(tmp_path, monkeypatch):
    # prepare -> train -> predict on ISIC 2024 as Kaggle ships it: test-metadata.csv beside test-image.hdf5.
    root = make_isic_2024(tmp_path / "isic2024", count=36, patients=9, test_count=10)
    checkpoint = prepare_and_train(root, tmp_path, "tiny", "--epochs", 2, "--neg-per-pos", 2, monkeypatch=monkeypatch)
    monkeypatch.chdir(tmp_path)  # the default folder: reports/<checkpoint's name>
    assert run_main(evaluate, checkpoint, "--predict", root / "test-metadata.csv", monkeypatch=monkeypatch) == 0
    submission = pd.read_csv(tmp_path / "reports" / "tiny" / "submission.csv")
    assert list(submission.columns) == ["isic_id", "target"]
    expected = pd.read_csv(root / "test-metadata.csv")["isic_id"].tolist()
    assert submission["isic_id"].tolist() == expected and expected != sorted(expected)  # the CSV's order
    assert submission["target"].between(0, 1).all() and submission["target"].nunique() > 1


def test_the_test_metadata_is_used_when_it_carries_the_signal(tmp_path, monkeypatch, capsys):
    # The images say nothing here (each its own colour, whatever its class); the lesion's size does: malignant
    # lesions measure 8 to 10 mm, benign ones 2 to 4. A submission that ranks the test lesions by malignancy
    # can only have read test-metadata.csv, and with its sizes blanked out the ranking is lost.
    root = make_isic_2024(tmp_path / "isic2024", count=90, patients=30, test_count=20)
    for name, target in (("train-metadata.csv", None), ("test-metadata.csv", [i % 2 for i in range(20)])):
        meta = pd.read_csv(root / name)
        target = meta["target"] if target is None else target
        meta["clin_size_long_diam_mm"] = [2 + 6 * t + 2 * (i % 5) / 4 for i, t in enumerate(target)]
        meta.to_csv(root / name, index=False)
    checkpoint = prepare_and_train(root, tmp_path, "sized", "--epochs", 1, "--folds", 3, monkeypatch=monkeypatch)
    truth = [i % 2 for i in range(20)]
    submission = predict(checkpoint, root / "test-metadata.csv", tmp_path / "out", monkeypatch)
    assert roc_auc(truth, submission["target"].tolist()) == 1.0
    assert "clin_size_long_diam_mm (known for 20 of 20)" in capsys.readouterr().out
    pd.read_csv(root / "test-metadata.csv").assign(clin_size_long_diam_mm="").to_csv(
        root / "test-metadata.csv", index=False)
    blanked = predict(checkpoint, root / "test-metadata.csv", tmp_path / "out", monkeypatch)
    assert roc_auc(truth, blanked["target"].tolist()) < 0.8


@pytest.fixture(scope="module")
def split_predictions(trained_baseline, tmp_path_factory):
    """evaluate.py's own predictions.csv on the test split, and 12 of its images: (checkpoint, table)."""
    checkpoint, data = trained_baseline
    out = tmp_path_factory.mktemp("split")
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert run_main(evaluate, checkpoint, "--out", out, monkeypatch=monkeypatch) == 0
    scored = pd.read_csv(out / "predictions.csv")
    labels = pd.read_csv(data / "labels.csv").set_index("isic_id")
    # In no sorted order, so that the CSV's order and a sorted listing differ.
    table = scored.head(12).assign(path=lambda t: [data / labels.loc[i, "image_path"] for i in t["isic_id"]])
    table = table.join(labels[["age", "sex", "site"]], on="isic_id")
    return checkpoint, table.sample(frac=1, random_state=0).reset_index(drop=True)


def predict(checkpoint, path, out, monkeypatch, *extra):
    assert run_main(evaluate, checkpoint, "--predict", path, "--out", out, *extra, monkeypatch=monkeypatch) == 0
    return pd.read_csv(out / "submission.csv")


def test_a_folder_an_hdf5_file_and_a_csv_score_each_image_as_its_split_does(split_predictions, tmp_path,
                                                                           monkeypatch):
    checkpoint, table = split_predictions
    for folder in (tmp_path / "folder", tmp_path / "archive" / "images"):
        folder.mkdir(parents=True)
        for row in table.itertuples():
            shutil.copy(row.path, folder / f"{row.isic_id}.jpg")
    write_hdf5(tmp_path / "packed" / "images.hdf5", {row.isic_id: row.path.read_bytes() for row in table.itertuples()})
    # An ISIC Archive export, its rows in their own order, images in images/, and the metadata labels.csv has
    # for them (in the archive's column names): the same probability as the split's, metadata and all.
    table[["isic_id", "age", "sex", "site"]].rename(columns={"age": "age_approx", "site": "anatom_site_general"}) \
        .to_csv(tmp_path / "archive" / "metadata.csv", index=False)
    with_metadata = table.set_index("isic_id")["probability_malignant"]
    # A folder or an HDF5 file has no metadata: the same image model, the metadata unknown.
    fusion = load_checkpoint(checkpoint)[1]["fusion"]
    unknown = pd.Series(fused_probabilities(fusion, table["probability_image_alone"].tolist(),
                                            pd.DataFrame(index=table.index)), index=table["isic_id"])
    by_name = sorted(table["isic_id"])
    for path, order, extra, expected in (
            (tmp_path / "folder", by_name, (), unknown),
            (tmp_path / "packed" / "images.hdf5", by_name, ("--workers", 1), unknown),  # a worker's own handle
            (tmp_path / "archive" / "metadata.csv", table["isic_id"].tolist(), (), with_metadata)):
        submission = predict(checkpoint, path, tmp_path / "out", monkeypatch, *extra)
        assert submission["isic_id"].tolist() == order, path
        assert submission["target"].tolist() == pytest.approx(expected[order].tolist(), abs=1e-6), path


def test_the_whole_csv_row_reaches_score(split_predictions, tmp_path, monkeypatch):
    # Models.score gets the metadata columns too (for a model that reads them), with a label it does not use.
    checkpoint, table = split_predictions
    write_hdf5(tmp_path / "test-image.hdf5", {row.isic_id: row.path.read_bytes() for row in table.itertuples()})
    table[["isic_id"]].assign(sex="male", clin_size_long_diam_mm="3.1").to_csv(tmp_path / "test-metadata.csv",
                                                                              index=False)
    seen = []
    real_score = evaluate.Models.score
    monkeypatch.setattr(evaluate.Models, "score", lambda models, t, *rest: seen.append(t) or real_score(models, t, *rest))
    predict(checkpoint, tmp_path / "test-metadata.csv", tmp_path / "out", monkeypatch)
    assert {"isic_id", "sex", "clin_size_long_diam_mm", "load_path", "label"} <= set(seen[0].columns)
    assert seen[0]["load_path"][0] == f"{tmp_path / 'test-image.hdf5'}::{table['isic_id'][0]}"


def bad_inputs(root, images):
    """(what --predict is given, words the error must contain) for each bad input, built under root."""
    ids = list(images)
    cases = {}
    garbled = root / "garbled" / "test-image.hdf5"  # the last image is not a JPEG: found before any is scored
    write_hdf5(garbled, {**images, "ISIC_9999999": b"\xff\xd8\xff\xe0 half a JPEG"})
    cases["unreadable image"] = (garbled, ["1 of 4 images cannot be scored", "test-image.hdf5::ISIC_9999999",
                                           "unreadable.csv", "--skip-unreadable"])
    write_hdf5(root / "keyless" / "test-image.hdf5", images)
    pd.DataFrame({"isic_id": ids + ["ISIC_0000404"]}).to_csv(root / "keyless" / "test-metadata.csv", index=False)
    cases["no HDF5 key"] = (root / "keyless" / "test-metadata.csv",
                            ["test-metadata.csv, line 5: no image 'ISIC_0000404' in", "test-image.hdf5"])
    for image_id in ids:
        make_image(root / "files" / f"{image_id}.jpg")
    pd.DataFrame({"isic_id": [ids[0], "ISIC_0000404"]}).to_csv(root / "files" / "metadata.csv", index=False)
    cases["no image file"] = (root / "files" / "metadata.csv", ["metadata.csv, line 3: no image 'ISIC_0000404'"])
    make_image(root / "secret.jpg")
    pd.DataFrame({"isic_id": [ids[0], "../secret"]}).to_csv(root / "files" / "escape.csv", index=False)
    cases["escaping id"] = (root / "files" / "escape.csv", ["escape.csv", "'../secret' leads outside"])
    whole = (root / "keyless" / "test-image.hdf5").read_bytes()
    (root / "truncated.hdf5").write_bytes(whole[:len(whole) // 2])
    cases["truncated HDF5"] = (root / "truncated.hdf5", ["truncated.hdf5 is not a readable HDF5 file"])
    (root / "foreign.hdf5").write_text("isic_id,target\n")
    cases["not HDF5"] = (root / "foreign.hdf5", ["foreign.hdf5 is not a readable HDF5 file"])
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    cases["empty folder"] = (root / "empty", ["empty holds no images"])
    return cases


CASES = ["unreadable image", "no HDF5 key", "no image file", "escaping id", "truncated HDF5", "not HDF5",
         "empty folder"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_in_one_line_and_leaves_the_previous_submission(case, trained_baseline, tmp_path,
                                                                        monkeypatch, capsys):
    checkpoint, _ = trained_baseline
    images = {f"ISIC_{i:07d}": jpeg_bytes((i * 40, 90, 60)) for i in range(3)}
    path, words = bad_inputs(tmp_path / "inputs", images)[case]
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission.csv").write_text("isic_id,target\nISIC_0000001,0.5\n")  # a previous run's
    capsys.readouterr()
    assert run_main(evaluate, checkpoint, "--predict", path, "--out", out, monkeypatch=monkeypatch) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and all(word in error for word in words), error
    assert (out / "submission.csv").read_text() == "isic_id,target\nISIC_0000001,0.5\n"
    # Where the images themselves fail (not the file that lists them), every one is listed beside it.
    unreadable = ["unreadable.csv"] if case in ("unreadable image", "no HDF5 key", "no image file") else []
    assert sorted(p.name for p in out.iterdir()) == ["submission.csv", *unreadable]


def test_every_broken_image_is_named_at_once_and_the_rest_scored_on_request(trained_baseline, tmp_path,
                                                                           monkeypatch, capsys):
    # A clinic's folder of 10 lesions, two of them broken: a text file named like a JPEG, and an empty one.
    checkpoint, data = trained_baseline
    folder = tmp_path / "clinic"
    folder.mkdir()
    for path in sorted((data / "images").glob("*.jpg"))[:8]:
        shutil.copy(path, folder / path.name)
    (folder / "notes.jpg").write_text("call the patient back on Monday")
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    assert run_main(evaluate, checkpoint, "--predict", folder, "--out", out, monkeypatch=monkeypatch) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "2 of 10 images cannot be scored" in error, error
    assert "empty.jpg: unreadable (an empty file)" in error and "notes.jpg: unreadable (not an image" in error
    listed = pd.read_csv(out / "unreadable.csv")
    assert listed["isic_id"].tolist() == ["empty", "notes"] and list(listed.columns) == ["isic_id", "location", "reason"]
    assert not (out / "submission.csv").exists()  # Kaggle's rule: a row for every image, or no submission
    assert run_main(evaluate, checkpoint, "--predict", folder, "--out", out, "--skip-unreadable",
                    monkeypatch=monkeypatch) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "scored 8 of 10 images; 2 unreadable, listed in" in last and "unreadable.csv" in last
    submission = pd.read_csv(out / "submission.csv")
    assert submission["isic_id"].tolist() == sorted(p.stem for p in folder.glob("*.jpg") if p.stem not in
                                                    ("empty", "notes"))
    assert pd.read_csv(out / "unreadable.csv")["isic_id"].tolist() == ["empty", "notes"]
    # Once they are fixed, the list goes: it never describes an older batch.
    (folder / "notes.jpg").unlink()
    (folder / "empty.jpg").unlink()
    assert run_main(evaluate, checkpoint, "--predict", folder, "--out", out, monkeypatch=monkeypatch) == 0
    assert not (out / "unreadable.csv").exists() and len(pd.read_csv(out / "submission.csv")) == 8
