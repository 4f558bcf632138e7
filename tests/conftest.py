"""Shared helpers: tiny image files, ISIC 2024-shaped folders, running a script's main() in-process, and a
small prepared dataset."""
import io
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.synthetic import isic_2024_metadata

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def make_image(path, colour=(150, 90, 60), size=(40, 30), mode="RGB"):
    """Write a small image file (format from the suffix) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def jpeg_bytes(colour, size=(24, 20)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_hdf5(path, images):
    """An HDF5 file as Kaggle's: one dataset per id holding the JPEG's bytes, stored the three ways h5py reads
    back differently (a bytes string, an opaque scalar, an array of uint8), in turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        for index, (key, data) in enumerate(images.items()):
            file[key] = [np.bytes_(data), np.void(data), np.frombuffer(data, np.uint8)][index % 3]
    return path


def make_isic_2024(root, count=36, patients=9, test_count=0):
    """An ISIC 2024 folder as Kaggle ships it, without train-image/: train-metadata.csv (every third image
    malignant) and train-image.hdf5; with test_count, test-metadata.csv and test-image.hdf5 too, their
    ids in no sorted order. Every image has a colour of its own."""
    ids = [f"ISIC_{i:07d}" for i in range(count)]
    write_hdf5(root / "train-image.hdf5", {image_id: jpeg_bytes((i * 7 % 256, 120, i * 3 % 256))
                                            for i, image_id in enumerate(ids)})
    isic_2024_metadata(ids, [int(i % 3 == 0) for i in range(count)],
                       [f"IP_{i % patients:07d}" for i in range(count)]).to_csv(root / "train-metadata.csv",
                                                                               index=False)
    if test_count:
        test_ids = [f"ISIC_{9_000_000 + (i * 7) % test_count:07d}" for i in range(test_count)]
        write_hdf5(root / "test-image.hdf5", {image_id: jpeg_bytes((200, i * 9 % 256, 40))
                                               for i, image_id in enumerate(test_ids)})
        isic_2024_metadata(test_ids, [0] * test_count, ["IP_9"] * test_count, test=True).to_csv(
            root / "test-metadata.csv", index=False)
    return root


def run_main(module, *args, monkeypatch):
    """Run module.main() with these command-line arguments; returns the exit code (0 when it returns)."""
    monkeypatch.setattr(sys, "argv", [module.__name__ + ".py", *map(str, args)])
    try:
        module.main()
    except SystemExit as stop:
        return stop.code
    return 0


def interrupt_at_epoch(n, monkeypatch):
    """Make train.py's n-th epoch (counted across folds) end in Ctrl-C; returns the real epoch function,
    to put back with monkeypatch.setattr(train, "train_one_epoch", it)."""
    import train

    real, epochs = train.train_one_epoch, []

    def cut_short(*args, **kwargs):
        epochs.append(1)
        if len(epochs) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", cut_short)
    return real


def prepare_and_train(source, folder, name, *train_options, monkeypatch):
    """prepare_data.py on source into folder/data, then train.py on it at 32 px with these options: the
    checkpoint, folder/<name>.pt."""
    import prepare_data
    import train

    assert run_main(prepare_data, "--source", source, "--out", folder / "data", monkeypatch=monkeypatch) == 0
    checkpoint = folder / f"{name}.pt"
    assert run_main(train, "--data", folder / "data", "--img-size", 32, *train_options, "--out", checkpoint,
                    monkeypatch=monkeypatch) == 0
    return checkpoint


def run_script(script, *args, cwd=ROOT, **kwargs):
    """Run a top-level script in a real subprocess, as a user would."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kwargs)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A small synthetic dataset (400 images of 64 px, a quarter of them for test), prepared once."""
    import prepare_data

    out = tmp_path_factory.mktemp("synthetic")
    with pytest.MonkeyPatch.context() as monkeypatch:
        code = run_main(prepare_data, "--source", "synthetic", "--out", out, "--synthetic-count", 400,
                        "--synthetic-size", 64, "--test-fraction", 0.25, monkeypatch=monkeypatch)
    assert code == 0
    return out


@pytest.fixture(scope="session")
def trained_baseline(synthetic_data, tmp_path_factory):
    """The baseline trained for 12 epochs on the synthetic set: (checkpoint path, data folder)."""
    import train

    checkpoint = tmp_path_factory.mktemp("checkpoints") / "baseline.pt"
    with pytest.MonkeyPatch.context() as monkeypatch:
        code = run_main(train, "--data", synthetic_data, "--img-size", 64, "--epochs", 12, "--out", checkpoint,
                        monkeypatch=monkeypatch)
    assert code == 0
    return checkpoint, synthetic_data


# --- Photos as people take them, for the exported model and the web page ---------------------------
# Ages, sexes and sites as a CSV (or a page's address) may give them: "m", "F" and "back" are spellings of
# male, female and posterior torso; "elbow" is no site and 150 no age the models know (scored as unknown).
PHOTO_METADATA = [("", "", ""), ("62", "female", "lower extremity"), ("35", "m", "back"), ("", "male", ""),
                  ("80", "", "head/neck"), ("50", "female", "elbow"), ("150", "F", "")]


def make_photos(sources, folder):
    """24 image files made from the lesions of `sources` (at least 24 image files), as photos come: JPEG (one
    progressive) and PNG, oblong both ways, grayscale, turned by an EXIF tag (their pixels stored on their side),
    one of 4200 x 3000 and two smaller than 64 px; and metadata.csv (isic_id, age_approx, sex,
    anatom_site_general), some of it unknown. Returns the files' names, in the CSV's order."""
    folder.mkdir(parents=True, exist_ok=True)
    lesions = iter(Image.open(path).convert("RGB") for path in sources)
    names = []

    def save(name, shape, mode="RGB", **options):
        next(lesions).resize(shape, Image.BICUBIC).convert(mode).save(folder / name, **options)
        names.append(name)

    for i, shape in enumerate([(200, 150), (150, 201), (90, 64), (64, 130), (300, 200), (123, 77), (256, 180),
                               (640, 480)]):
        save(f"oblong_{i}.jpg", shape, quality=90)
    save("progressive.jpg", (320, 240), quality=90, progressive=True)
    for i, shape in enumerate([(150, 200), (201, 150), (64, 64), (97, 131), (333, 250)]):
        save(f"png_{i}.png", shape)
    save("gray_jpeg.jpg", (160, 120), "L", quality=90)
    save("gray_png.png", (120, 160), "L")
    # Stored on their side, with the tag that says how to turn them upright.
    for name, orientation, turn in [("exif_6", 6, Image.ROTATE_90), ("exif_8", 8, Image.ROTATE_270),
                                    ("exif_3", 3, Image.ROTATE_180), ("exif_6b", 6, Image.ROTATE_90),
                                    ("exif_8b", 8, Image.ROTATE_270)]:
        exif = Image.Exif()
        exif[0x0112] = orientation
        next(lesions).resize((180, 120), Image.BICUBIC).transpose(turn).save(folder / f"{name}.jpg", quality=90,
                                                                             exif=exif)
        names.append(f"{name}.jpg")
    save("large.jpg", (4200, 3000), quality=85)
    save("small_jpeg.jpg", (40, 30), quality=90)
    save("small_png.png", (50, 50))
    rows = [dict(zip(["isic_id", "age_approx", "sex", "anatom_site_general"],
                     [Path(name).stem, *PHOTO_METADATA[i % len(PHOTO_METADATA)]])) for i, name in enumerate(names)]
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return names


@pytest.fixture(scope="session")
def photos(trained_baseline, tmp_path_factory):
    """The baseline's export, make_photos' images and evaluate.py --predict --no-tta's probabilities for them
    with their metadata: (the .onnx file, the photos' folder, their file names, {isic_id: probability})."""
    import evaluate

    checkpoint, data = trained_baseline
    folder = tmp_path_factory.mktemp("photos")
    names = make_photos(sorted((data / "images").glob("*.jpg")), folder / "images")
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert run_main(evaluate, checkpoint, "--export", folder / "baseline.onnx", monkeypatch=monkeypatch) == 0
        assert run_main(evaluate, checkpoint, "--predict", folder / "images" / "metadata.csv", "--no-tta", "--out",
                        folder / "out", monkeypatch=monkeypatch) == 0
    expected = pd.read_csv(folder / "out" / "submission.csv")
    return folder / "baseline.onnx", folder / "images", names, dict(zip(expected["isic_id"], expected["target"]))
