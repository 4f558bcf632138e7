"""prepare_data.py: the four layouts, labels, exclusions, grouping, splits and subsets."""
import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from torch.utils.data import DataLoader

import prepare_data
from conftest import jpeg_bytes, make_isic_2024, make_image, run_main, run_script, write_hdf5
from dataset import CustomDataset, build_transforms, read_split


def prepare(monkeypatch, source, out, *extra):
    code = run_main(prepare_data, "--source", source, "--out", out, *extra, monkeypatch=monkeypatch)
    assert code == 0
    return pd.read_csv(out / "labels.csv", dtype={"group": str})


def assert_groups_never_cross_splits(table):
    splits_per_group = table.groupby("group")["split"].nunique()
    assert (splits_per_group == 1).all(), splits_per_group[splits_per_group > 1]


def make_ham(root, lesions=30):
    """HAM10000-like: two images per lesion, plus an akiec row, a missing image and a corrupt one."""
    rows = []
    for lesion in range(lesions):
        dx = ["nv", "mel", "bkl", "bcc", "df", "vasc"][lesion % 6]
        for shot in range(2):
            image_id = f"ISIC_{lesion * 2 + shot:07d}"
            # A colour of its own for every image (below 64 lesions): byte-identical files under two labels
            # would be refused as a contradiction in the data.
            make_image(root / "images" / f"{image_id}.jpg", colour=(lesion * 4, shot * 90, 60))
            rows.append({"lesion_id": f"HAM_{lesion:07d}", "image_id": image_id, "dx": dx, "dx_type": "histo",
                         "age": 50.0, "sex": "male", "localization": "back"})
    rows.append({"lesion_id": "HAM_9000000", "image_id": "ISIC_9000000", "dx": "akiec"})     # no image either
    rows.append({"lesion_id": "HAM_9000001", "image_id": "ISIC_9000001", "dx": "mel"})       # image missing
    rows.append({"lesion_id": "HAM_9000002", "image_id": "ISIC_9000002", "dx": "nv"})        # image corrupt
    (root / "images" / "ISIC_9000002.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)


def test_ham10000_layout(tmp_path, monkeypatch, capsys):
    make_ham(tmp_path / "ham")
    table = prepare(monkeypatch, tmp_path / "ham", tmp_path / "out")
    output = capsys.readouterr().out
    assert "layout: HAM10000" in output
    assert "excluded 1 rows with diagnosis 'akiec'" in output
    assert "skipped 1 rows: image file missing: ISIC_9000001" in output
    assert "skipped 1 rows: image file unreadable: ISIC_9000002" in output
    # Still skipped, as before; and all of them listed in one file, where they were looked for and why.
    listed = pd.read_csv(tmp_path / "out" / "unreadable.csv")
    assert listed["isic_id"].tolist() == ["ISIC_9000001", "ISIC_9000002"]
    assert listed["reason"][0] == "missing" and listed["reason"][1].startswith("unreadable")
    assert listed["location"][0].endswith("ISIC_9000001.jpg")
    assert "the 2 images left out are listed in" in output
    assert len(table) == 60
    # mel and bcc are malignant; nv, bkl, df, vasc benign.
    assert table.groupby("diagnosis")["label"].first().to_dict() == {
        "bcc": 1, "bkl": 0, "df": 0, "mel": 1, "nv": 0, "vasc": 0}
    assert table["group"].str.startswith("HAM_").all()
    assert_groups_never_cross_splits(table)
    assert set(table["split"]) == {"train", "val", "test"}
    # Each split holds both classes.
    assert (table.groupby("split")["label"].nunique() == 2).all()


def test_isic_archive_layout_with_diagnosis_1(tmp_path, monkeypatch, capsys):
    root = tmp_path / "isic"
    rows = []
    for i in range(40):
        isic_id = f"ISIC_{i:07d}"
        make_image(root / f"{isic_id}.jpg", colour=(i * 6, 100, 50))
        rows.append({"isic_id": isic_id, "diagnosis_1": ["Benign", "Malignant", "Indeterminate", "Benign"][i % 4],
                     "patient_id": f"IP_{i // 4}", "lesion_id": f"IL_{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    table = prepare(monkeypatch, root, tmp_path / "out")
    assert "excluded 10 rows with diagnosis 'Indeterminate'" in capsys.readouterr().out
    assert len(table) == 30
    assert table.set_index("isic_id")["label"]["ISIC_0000001"] == 1
    assert table.set_index("isic_id")["label"]["ISIC_0000000"] == 0
    assert table["group"].str.startswith("IP_").all()  # a patient is the widest group
    assert_groups_never_cross_splits(table)


def test_isic_archive_layout_with_benign_malignant_and_images_folder(tmp_path, monkeypatch, capsys):
    root = tmp_path / "legacy"
    rows = []
    for i in range(20):
        make_image(root / "images" / f"ISIC_{i:07d}.jpg", colour=(i * 10, 80, 80))
        rows.append({"isic_id": f"ISIC_{i:07d}", "benign_malignant": ["benign", "malignant"][i % 2]})
    rows[0]["benign_malignant"] = "indeterminate/benign"
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    table = prepare(monkeypatch, root / "metadata.csv", tmp_path / "out")  # a CSV path works too
    assert "excluded 1 rows with diagnosis 'indeterminate/benign'" in capsys.readouterr().out
    assert len(table) == 19 and table["label"].sum() == 10
    assert (table["group"] == table["isic_id"]).all()  # no lesion or patient ids: each image its own group


def test_isic_2024_layout(tmp_path, monkeypatch):
    root = tmp_path / "isic2024"
    rows = []
    for i in range(30):
        make_image(root / "train-image" / "image" / f"ISIC_{i:07d}.jpg", colour=(i * 8, 120, 90))
        rows.append({"isic_id": f"ISIC_{i:07d}", "target": int(i % 3 == 0), "patient_id": f"IP_{i % 7}"})
    pd.DataFrame(rows).to_csv(root / "train-metadata.csv", index=False)
    table = prepare(monkeypatch, root, tmp_path / "out")
    assert len(table) == 30 and table["label"].sum() == 10
    assert table["group"].nunique() == 7
    assert_groups_never_cross_splits(table)


def test_isic_2024_as_kaggle_ships_it_reads_train_image_hdf5(tmp_path):
    # No train-image/ folder: the images are in train-image.hdf5, the 55 columns of every kind and mixed types.
    root = make_isic_2024(tmp_path / "isic2024", count=36, patients=9)
    meta = pd.read_csv(root / "train-metadata.csv", dtype=str)
    with h5py.File(root / "train-image.hdf5", "a") as file:  # ISIC_0000035 again, byte for byte, as ISIC_0000036
        file["ISIC_0000036"] = file["ISIC_0000035"][()]
    extra = meta.iloc[[35, 35]].assign(isic_id=["ISIC_0000036", "ISIC_0000037"], patient_id=["IP_X", "IP_Y"])
    pd.concat([meta, extra]).to_csv(root / "train-metadata.csv", index=False)  # ISIC_0000037: no image at all
    step = run_script("prepare_data.py", "--source", root, "--out", tmp_path / "out")
    assert step.returncode == 0 and step.stderr == "", step.stderr  # no pandas DtypeWarning, no warning at all
    assert "skipped 1 rows: image file missing: ISIC_0000037" in step.stdout
    table = pd.read_csv(tmp_path / "out" / "labels.csv", dtype={"group": str})
    assert len(table) == 37 and table["label"].sum() == 12
    assert table["group"].nunique() == 9  # the patients; IP_X joined ISIC_0000035's patient by identical bytes
    assert_groups_never_cross_splits(table)
    with h5py.File(root / "train-image.hdf5") as file:  # every image copied out, byte for byte, for training
        for row in table.itertuples():
            assert (tmp_path / "out" / row.cached_path).read_bytes() == np.asarray(file[row.isic_id][()]).tobytes()
    dataset = CustomDataset(read_split(tmp_path / "out", "train"), build_transforms(32, False, (0.5,) * 3, (0.5,) * 3))
    assert all(dataset[i][0].shape == (3, 32, 32) for i in range(len(dataset)))


def test_isic_2024_images_too_large_are_resized_and_copy_size_0_reads_the_hdf5_itself(tmp_path, monkeypatch):
    root = make_isic_2024(tmp_path / "isic2024", count=24, patients=12)
    write_hdf5(root / "train-image.hdf5", {f"ISIC_{i:07d}": jpeg_bytes((i * 9, 60, 90), (80, 60) if i < 4 else (24, 20))
                                           for i in range(24)})
    table = prepare(monkeypatch, root, tmp_path / "out", "--copy-size", 40)
    assert all(Image.open(tmp_path / "out" / path).size == ((53, 40) if i < 4 else (24, 20))
               for i, path in zip(table["isic_id"].str[-2:].astype(int), table["cached_path"]))
    table = prepare(monkeypatch, root, tmp_path / "plain", "--copy-size", 0)
    assert (table["image_path"].str.rsplit("/", n=1).str[1] == "train-image.hdf5::" + table["isic_id"]).all()
    for workers in (0, 1):  # read in this process, then in a worker process with its own h5py handle
        loader = DataLoader(CustomDataset(read_split(tmp_path / "plain", "train"),
                                          build_transforms(16, False, (0.5,) * 3, (0.5,) * 3)), 8, num_workers=workers)
        assert sum(len(labels) for _, labels in loader) == (table["split"] == "train").sum()


def test_a_truncated_or_foreign_train_image_hdf5_stops_naming_it(tmp_path, monkeypatch, capsys):
    root = make_isic_2024(tmp_path / "isic2024", count=12, patients=4)
    whole = (root / "train-image.hdf5").read_bytes()
    for broken in (whole[:len(whole) // 2], b"not an HDF5 file at all"):
        (root / "train-image.hdf5").write_bytes(broken)
        assert run_main(prepare_data, "--source", root, "--out", tmp_path / "out", monkeypatch=monkeypatch) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "train-image.hdf5 is not a readable HDF5 file" in error, error


def test_folder_per_class_and_identical_files_share_a_group(tmp_path, monkeypatch):
    root = tmp_path / "folders"
    for i in range(12):
        make_image(root / "benign" / f"b{i}.png", colour=(i * 20, 50, 50))
        make_image(root / "malignant" / f"m{i}.jpg", colour=(50, i * 20, 50))
    (root / "benign" / "copy_of_b3.png").write_bytes((root / "benign" / "b3.png").read_bytes())
    (root / "benign" / "notes.txt").write_text("not an image")
    table = prepare(monkeypatch, root, tmp_path / "out")
    assert len(table) == 25
    assert table["label"].sum() == 12
    by_id = table.set_index("isic_id")
    assert by_id.loc["copy_of_b3", "group"] == by_id.loc["b3", "group"]
    assert by_id.loc["copy_of_b3", "split"] == by_id.loc["b3", "split"]


def test_unknown_columns_give_a_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine.csv").write_text("name,verdict\na.jpg,bad\n")
    code = run_main(prepare_data, "--source", tmp_path / "mine.csv", "--out", tmp_path / "out",
                    monkeypatch=monkeypatch)
    error = capsys.readouterr().err
    assert code == 2
    assert "mine.csv: name, verdict" in error           # what it found
    assert "image_id, dx, lesion_id" in error or "dx, image_id, lesion_id" in error  # what it expected
    assert "benign_malignant" in error and "diagnosis_1" in error


def test_nothing_usable_is_an_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "metadata.csv").write_text("isic_id,benign_malignant\nISIC_0000001,benign\n")
    code = run_main(prepare_data, "--source", tmp_path, "--out", tmp_path / "out", monkeypatch=monkeypatch)
    assert code == 2
    assert "no usable rows remain" in capsys.readouterr().err
    assert not (tmp_path / "out" / "labels.csv").exists()


def test_synthetic_set_is_deterministic_and_split_by_seed(tmp_path, monkeypatch):
    options = ["--synthetic-count", 60, "--synthetic-size", 32]
    first = prepare(monkeypatch, "synthetic", tmp_path / "a", *options)
    again = prepare(monkeypatch, "synthetic", tmp_path / "b", *options)
    other = prepare(monkeypatch, "synthetic", tmp_path / "c", *options, "--seed", 1)
    pd.testing.assert_frame_equal(first, again)
    image = "images/SYN_00007.jpg"
    assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()
    assert not first["label"].equals(other["label"])
    assert set(first["label"]) == {0, 1}
    # Images inside the output folder are stored relative to it, so the folder can be moved.
    assert first["image_path"].str.startswith("images/").all()


def test_split_is_stratified_with_the_requested_fractions(tmp_path, monkeypatch):
    table = prepare(monkeypatch, "synthetic", tmp_path / "s", "--synthetic-count", 200, "--synthetic-size", 32)
    counts = table["split"].value_counts()
    assert counts["train"] == pytest.approx(140, abs=2)
    assert counts["val"] == pytest.approx(30, abs=2) and counts["test"] == pytest.approx(30, abs=2)
    share = table.groupby("split")["label"].mean()
    assert share.max() - share.min() < 0.05


def test_test_only_and_balanced_subset(tmp_path, monkeypatch):
    make_ham(tmp_path / "ham", lesions=60)
    table = prepare(monkeypatch, tmp_path / "ham", tmp_path / "only", "--test-only")
    assert (table["split"] == "test").all() and len(table) == 120
    # 120 images, 40 malignant: a balanced subset of 40 takes 20 of each class.
    subset = prepare(monkeypatch, tmp_path / "ham", tmp_path / "subset", "--max-images", 40, "--balanced")
    assert len(subset) == 40 and subset["label"].sum() == 20
    stratified = prepare(monkeypatch, tmp_path / "ham", tmp_path / "strat", "--max-images", 30)
    assert len(stratified) == 30 and stratified["label"].sum() == 10
    assert_groups_never_cross_splits(subset)


def test_large_images_get_resized_copies_that_training_reads(tmp_path, monkeypatch, capsys):
    # Class folders: 6 large photos, 400x300, one of them stored on its side with an EXIF rotation; and 6 small.
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": shown as 300x400
    for shade, label in enumerate(("benign", "malignant")):
        for i in range(6):
            path = make_image(tmp_path / "src" / label / f"{label}_{i}.jpg", (40 * i, 90, 60 * shade), (400, 300))
            if i == 0:
                Image.open(path).save(path, exif=exif)
        for i in range(6, 12):
            make_image(tmp_path / "src" / label / f"{label}_{i}.jpg", (20 * i, 90, 60 * shade), (64, 48))
    originals = {path: path.read_bytes() for path in (tmp_path / "src").rglob("*.jpg")}
    table = prepare(monkeypatch, tmp_path / "src", tmp_path / "out", "--copy-size", 100)
    assert "of 12 images" in capsys.readouterr().out

    large = table["isic_id"].str.split("_").str[1].astype(int) < 6
    assert table.loc[~large, "cached_path"].isna().all()  # small enough: read as they are
    for row in table[large].itertuples():
        copy = Image.open(tmp_path / "out" / row.cached_path)
        expected = (100, 133) if row.isic_id.endswith("_0") else (133, 100)  # upright, shorter side 100
        assert copy.size == expected and copy.format == "JPEG", row
    assert {path: path.read_bytes() for path in (tmp_path / "src").rglob("*.jpg")} == originals  # untouched

    # A second run reuses the copies; then training reads them, even with the large originals gone.
    prepare(monkeypatch, tmp_path / "src", tmp_path / "out", "--copy-size", 100)
    assert "of 12 images in" in (output := capsys.readouterr().out) and ": 0 made now" in output
    for path in originals:
        if int(path.stem.split("_")[1]) < 6:
            path.unlink()
    dataset = CustomDataset(read_split(tmp_path / "out", "train"), build_transforms(32, False, (0.5,) * 3, (0.5,) * 3))
    assert all(dataset[i][0].shape == (3, 32, 32) for i in range(len(dataset)))
