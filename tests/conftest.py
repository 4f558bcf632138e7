"""Shared helpers: tiny image files, ISIC 2024-shaped folders, running a script's main() in-process, and a
small prepared dataset."""
import io
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
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
