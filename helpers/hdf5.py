"""Images stored inside an HDF5 file, as Kaggle ships ISIC 2024; a first reading can skip it.

train-image.hdf5 holds one dataset per isic_id whose value is the bytes of that image's JPEG file. Such
an image is addressed by one string, 'FILE.hdf5::KEY', which goes wherever a file path goes (labels.csv,
a table's load_path) and which helpers.images.load_image reads like a file.

- address, split_address: from (file, key) to 'FILE.hdf5::KEY' and back;
- read: an image's bytes; a key the file lacks is a missing image (FileNotFoundError), as a file is;
- keys: every key of a file, sorted, or a DataError naming a file that is not HDF5 or is truncated;
- beside: the HDF5 file that holds a metadata CSV's images (evaluate.py --predict).
"""
import os
import threading

import h5py
import numpy as np

from helpers.files import DataError

SUFFIXES = (".hdf5", ".h5")
SEPARATOR = "::"


def address(file, key):
    return f"{file}{SEPARATOR}{key}"


def split_address(path):
    """(file, key) if path is 'FILE.hdf5::KEY', else None: a plain file path."""
    file, separator, key = str(path).rpartition(SEPARATOR)
    return (file, key) if separator and file.lower().endswith(SUFFIXES) else None


def open_hdf5(file):
    """h5py.File(file, 'r'), or a DataError naming a file that is not HDF5 or is cut short."""
    try:
        return h5py.File(file, "r")
    except FileNotFoundError:
        raise
    except OSError as error:
        raise DataError(f"{file} is not a readable HDF5 file ({error}); download or copy it again") from None


# Opening the file costs far more than reading one image: each process keeps one handle per file, opened
# on first use. Keyed by process id too, because an h5py handle inherited through fork (a DataLoader
# worker) must not be used: each worker opens its own.
_handles = {}
_opening = threading.Lock()  # prepare_data.py reads images in threads


def handle(file):
    key = (os.getpid(), str(file))
    if key not in _handles:
        with _opening:
            if key not in _handles:
                _handles[key] = open_hdf5(file)
    return _handles[key]


def read(path):
    """The bytes stored under an address 'FILE.hdf5::KEY'. They are read straight into a buffer of the
    dataset's own type: a bytes string, an opaque scalar or an array of uint8, as the file was written, the
    buffer holds the same bytes. (h5py's Dataset objects cost twice the time: 400,000 images are read twice.)"""
    file, key = split_address(path)
    try:
        dataset = h5py.h5d.open(handle(file).id, key.encode())
    except KeyError:  # no such key (or a group): a missing image, which every caller handles as a missing file
        raise FileNotFoundError(f"no image {key!r} in {file}") from None
    buffer = np.empty(dataset.shape, dataset.dtype)
    dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, buffer)
    return buffer.tobytes()


def keys(file):
    """Every key of the file, sorted; the file is closed again (a DataLoader worker opens its own)."""
    with open_hdf5(file) as opened:
        return sorted(opened.keys())


def beside(csv):
    """The HDF5 file beside a metadata CSV that holds its images: the one named after it (test-metadata.csv:
    test-image.hdf5, or test-metadata.hdf5), else the only one there; None when there is none."""
    found = sorted(path for path in csv.parent.iterdir() if path.suffix.lower() in SUFFIXES)
    names = {csv.stem, csv.stem.removesuffix("-metadata"), csv.stem.removesuffix("-metadata") + "-image"}
    named = [path for path in found if path.stem in names]
    if named:
        return named[0]
    if len(found) <= 1:
        return found[0] if found else None
    raise DataError(f"{csv}: its folder holds several HDF5 files ({', '.join(path.name for path in found)}) and none "
                    f"is named after it; name the one with its images {csv.stem.removesuffix('-metadata')}-image.hdf5")
