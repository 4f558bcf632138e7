"""Opening image files safely, and the resized copies that prepare_data.py makes; a first reading can skip it.

- load_image: any image file as 8-bit RGB, upright, or a DataError naming the file;
- inspect_image: whether a file decodes, its sha1 and its size, without a full decode;
- add_resized_copies: a small copy of every large image, decoded once instead of every epoch;
- find_images: where each id's image file is, among a layout's folders.
Each takes a file path or the address of an image inside an HDF5 file, 'FILE.hdf5::KEY' (helpers/hdf5.py).
"""
import hashlib
import io
import math
import os
from pathlib import Path

from PIL import Image, ImageOps

from helpers import hdf5
from helpers.files import DataError, in_threads, save_atomically

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def find_images(folders, image_ids):
    """For each id, the first existing <folder>/<id>.<suffix>, or the first candidate if none exists."""
    # isic-cli has named its downloads <isic_id>.JPG, which a case-sensitive file system tells apart from .jpg.
    suffixes = (".jpg", ".png", ".jpeg", ".JPG", ".tif", ".tiff")
    # Each folder is listed once, and every id looked up in that list: hundreds of thousands of ids
    # would otherwise cost millions of file-system calls.
    listed = [(str(folder), set(os.listdir(folder)) if folder.is_dir() else set()) for folder in folders]
    paths = []
    for image_id in image_ids:
        names = [f"{image_id}{suffix}" for suffix in suffixes]
        found = next((os.path.join(folder, name) for folder, listing in listed for name in names if name in listing),
                     None)
        paths.append(found or os.path.join(listed[0][0], names[0]))
    return paths


def read_bytes(path):
    """The bytes of an image file, or of an image inside an HDF5 file."""
    return hdf5.read(path) if hdf5.split_address(path) else Path(path).read_bytes()


def refuse_huge(image, path):
    """A file of a few kB can claim billions of pixels (a "decompression bomb"); refuse it before decoding."""
    if image.width * image.height > Image.MAX_IMAGE_PIXELS:
        raise DataError(f"{path} claims {image.width}x{image.height} pixels, more than the "
                        f"{Image.MAX_IMAGE_PIXELS:,} allowed (a decompression-bomb guard); resize it if it is real")


def load_image(path, shorter_side=None):
    """Open any image as 8-bit RGB, upright as the camera meant it, or raise DataError naming it.

    With shorter_side, a JPEG is decoded at the smallest of 1/2, 1/4 or 1/8 scale that keeps its shorter
    side at least that long: JPEG stores its picture in 8x8 blocks, so it can skip the detail it would
    throw away, and a 6000x4000 photo wanted at 256 px decodes ten times faster or more.
    """
    try:
        image = Image.open(io.BytesIO(read_bytes(path)))
        refuse_huge(image, path)
        if shorter_side:
            scale = shorter_side / min(image.size)
            image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image = ImageOps.exif_transpose(image)  # phones store "rotate 90°" as a tag, not as pixels
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale 0..65535 down to 0..255
            image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return image.convert("RGB")  # L, LA, RGBA, CMYK, YCbCr ... -> RGB
    except FileNotFoundError:
        raise DataError(f"image not found: {path}; run prepare_data.py again or restore the file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot decode image {path} ({error}); replace the file or remove its row") from None


def inspect_image(path):
    """(sha1 of the file, None, its shorter side in pixels) if it decodes, else (None, the reason, None)."""
    try:
        data = read_bytes(path)
        if not data:
            return None, "unreadable (an empty file)", None
        image = Image.open(io.BytesIO(data))
        refuse_huge(image, path)
        shorter_side = min(image.size)
        # Decode at 1/8 scale: JPEG can do that almost for free, and it still reads every byte,
        # so a truncated file is caught without the cost of a full-size decode.
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        return hashlib.sha1(data).hexdigest(), None, shorter_side
    except FileNotFoundError:
        return None, "missing", None
    except Image.UnidentifiedImageError:
        return None, "unreadable (not an image file)", None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, DataError) as error:
        return None, f"unreadable ({error})", None


def inspect_images(paths):
    """inspect_image for each path, in threads, with a progress line: reading thousands of files is
    mostly waiting for the disk, and threads overlap the waits."""
    return in_threads(inspect_image, list(paths), "checked", min(8, os.cpu_count() or 1))


# --- Decoding once: resized copies -------------------------------------------------------------------
# A model that looks at 128 or 224 px gains nothing from a 6000x4000 original, but decoding one costs
# a tenth of a second or more: every epoch, for every image, more than the model's own work on a CPU.
# So every image whose shorter side is longer than --copy-size gets a copy with that shorter side,
# decoded and resized once; the Dataset reads the copy. A little above the training size leaves
# random crops room to zoom in. Originals are never touched. Copies are named after the sha1 of their
# original, so a changed original gets a new copy and a second run reuses what is still valid.
# An image inside an HDF5 file gets a copy whatever its size, so that training reads plain files: a small
# one its bytes as they are, the JPEG file that Kaggle also ships as train-image/image/<isic_id>.jpg.

def make_copy(path, target, shorter_side, resize):
    """Write target: the image with this shorter side, or without resize, its bytes as they are."""
    if not resize:
        return save_atomically(target, lambda tmp: Path(tmp).write_bytes(read_bytes(path)))
    image = load_image(path, shorter_side)  # JPEGs decode straight at 1/2, 1/4 or 1/8 scale
    scale = shorter_side / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    save_atomically(target, lambda tmp: image.save(tmp, format="JPEG", quality=95))


def add_resized_copies(table, out, shorter_side):
    """A `cached_path` column: the copy's path inside OUT, or empty where the original is small enough."""
    folder = out / f"resized-{shorter_side}"
    large = table["shorter_side"] > shorter_side
    packed = table["image_path"].map(hdf5.split_address).notna() & ~large  # small, but inside an HDF5 file
    copied = large | packed
    targets = {sha1: folder / f"{sha1}.jpg" for sha1 in table.loc[copied, "sha1"]}
    # One copy per distinct file (keyed by sha1): two ids of one file must not write the same copy at once.
    todo = list({sha1: (path, targets[sha1], big) for sha1, path, big in zip(table.loc[copied, "sha1"],
                                                                              table.loc[copied, "image_path"],
                                                                              large[copied])
                 if not targets[sha1].exists()}.values())
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        try:  # decoding and resizing release Python's lock, so threads use every core
            in_threads(lambda job: make_copy(job[0], job[1], shorter_side, job[2]), todo, "copied",
                       os.cpu_count() or 1, block=16)
        except KeyboardInterrupt:
            print(f"\ninterrupted; the copies made so far stay in {folder}, and the same command makes the rest")
            raise SystemExit(130) from None
    taken_out = f", and plain copies of {int(packed.sum())} smaller images out of HDF5" if packed.any() else ""
    print(f"resized copies (shorter side {shorter_side} px) of {int(large.sum())} images in {folder}{taken_out}: "
          f"{len(todo)} made now; {int((~copied).sum())} images are small enough to read as they are")
    return [os.path.relpath(targets[sha1], out) if copy else None for sha1, copy in zip(table["sha1"], copied)]
