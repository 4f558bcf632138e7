"""Shared helpers: tiny image files, running a script's main() in-process, and a small prepared dataset."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def make_image(path, colour=(150, 90, 60), size=(40, 30), mode="RGB"):
    """Write a small image file (format from the suffix) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def run_main(module, *args, monkeypatch):
    """Run module.main() with these command-line arguments; returns the exit code (0 when it returns)."""
    monkeypatch.setattr(sys, "argv", [module.__name__ + ".py", *map(str, args)])
    try:
        module.main()
    except SystemExit as stop:
        return stop.code
    return 0


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
