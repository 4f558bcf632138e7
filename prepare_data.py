"""Step 1 of 5: turn a metadata CSV into one labelled, split table (labels.csv).

A dermoscopy collection arrives as images plus a metadata CSV whose diagnosis column is the ground
truth. This script reads that CSV, maps each diagnosis to benign (0) or malignant (1), drops rows it
cannot use (and says which), and assigns every image to train / val / test so that no lesion, no
patient and no byte-identical file ever sits on two sides of the split.

Reads (detected from the CSV's columns, or from the folder):
  HAM10000            HAM10000_metadata.csv: image_id, dx, lesion_id;   images/<image_id>.jpg
  ISIC Archive        metadata.csv: isic_id + benign_malignant or diagnosis_1;  <isic_id>.jpg
  ISIC 2024 (Kaggle)  train-metadata.csv: isic_id, target, patient_id;  train-image/image/<isic_id>.jpg
  folder per class    benign/*.jpg, malignant/*.jpg
  synthetic           a built-in set of drawn lesions, so everything runs offline with no data
With no --source (or --source isic-archive) it first downloads a subset of the public ISIC Archive, by
default 400 dermoscopic images as 256 px thumbnails, into OUT/isic-archive-thumbnail/ in the ISIC Archive
layout (as the official isic-cli writes it), and reads that; a second run fetches only what is missing.
Writes OUT/labels.csv with columns isic_id, image_path, label, split, group, diagnosis, cached_path
(a resized copy in OUT/resized-256/, made for each image larger than that; see --copy-size).

Examples:
  python prepare_data.py                                          # 400 ISIC Archive images (needs internet)
  python prepare_data.py --source isic-archive --max-images 1000 --balanced --isic-size full
  python prepare_data.py --source synthetic
  python prepare_data.py --source ../shared/data/ham10000 --out data/ham --max-images 400 --balanced
  python prepare_data.py --source ../shared/data/isic_uda --out data/uda --test-only
"""
import argparse
import hashlib
import http.client
import io
import json
import math
import os
import random
import re
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from dataset import DataError, Progress, load_image, refuse_huge, save_atomically

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}

# HAM10000's seven diagnoses. Actinic keratosis / intra-epithelial carcinoma (akiec) is neither
# cleanly benign nor malignant, so it is left out rather than forced into a class.
HAM_DX = {"mel": 1, "bcc": 1, "nv": 0, "bkl": 0, "df": 0, "vasc": 0}


# --- Reading the four layouts ------------------------------------------------------------------
# Each reader returns the same columns: isic_id, image_path, label (0/1, or NaN when the diagnosis
# is neither), diagnosis (the original text), and the grouping keys that are known (lesion, patient).

def read_ham10000(csv, meta):
    folders = [csv.parent / "images", csv.parent / "HAM10000_images_part_1",
               csv.parent / "HAM10000_images_part_2", csv.parent]
    return pd.DataFrame({
        "isic_id": meta["image_id"],
        "image_path": find_images(folders, meta["image_id"]),
        "label": meta["dx"].str.strip().str.lower().map(HAM_DX),
        "diagnosis": meta["dx"],
        "lesion": meta["lesion_id"],
    })


def read_isic_archive(csv, meta):
    # Newer exports give diagnosis_1 (Benign / Malignant / Indeterminate), older ones
    # benign_malignant (benign / malignant / indeterminate...). Prefer the newer where it is filled.
    diagnosis = meta["diagnosis_1"] if "diagnosis_1" in meta else pd.Series(pd.NA, index=meta.index)
    if "benign_malignant" in meta:
        diagnosis = diagnosis.fillna(meta["benign_malignant"])
    folders = [csv.parent, csv.parent / "images"]
    return pd.DataFrame({
        "isic_id": meta["isic_id"],
        "image_path": find_images(folders, meta["isic_id"]),
        "label": diagnosis.str.strip().str.lower().map({"benign": 0, "malignant": 1}),
        "diagnosis": diagnosis,
        "lesion": meta.get("lesion_id"),
        "patient": meta.get("patient_id"),
    })


def read_isic_2024(csv, meta):
    folders = [csv.parent / "train-image" / "image", csv.parent / "images", csv.parent]
    return pd.DataFrame({
        "isic_id": meta["isic_id"],
        "image_path": find_images(folders, meta["isic_id"]),
        "label": meta["target"].str.strip().map({"0": 0, "1": 1}),
        "diagnosis": meta["target"],
        "patient": meta["patient_id"],
    })


def read_class_folders(root):
    rows = [{"isic_id": path.stem, "image_path": path, "label": label, "diagnosis": name}
            for label, name in enumerate(["benign", "malignant"])
            for path in sorted((root / name).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    return pd.DataFrame(rows, columns=["isic_id", "image_path", "label", "diagnosis"])


# The columns that identify a layout, in the order they are tried.
LAYOUTS = [
    ("HAM10000", {"image_id", "dx", "lesion_id"}, read_ham10000),
    ("ISIC 2024 challenge", {"isic_id", "target", "patient_id"}, read_isic_2024),
    ("ISIC Archive", {"isic_id", "diagnosis_1"}, read_isic_archive),
    ("ISIC Archive", {"isic_id", "benign_malignant"}, read_isic_archive),
]


def find_images(folders, image_ids):
    """For each id, the first existing <folder>/<id>.<suffix>, or the first candidate if none exists."""
    # isic-cli has named its downloads <isic_id>.JPG, which a case-sensitive file system tells apart from .jpg.
    suffixes = (".jpg", ".png", ".jpeg", ".JPG")
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


def refuse_paths_outside(table, csv):
    """An id such as '../../etc/passwd' in a CSV must not become a path outside the data folder."""
    root = os.path.normpath(csv.parent)
    for isic_id, path in zip(table["isic_id"], table["image_path"]):
        plain_name = not any(part in str(isic_id) for part in ("/", "\\", ".."))  # the cheap test first
        if not plain_name and not Path(os.path.normpath(path)).is_relative_to(root):
            raise DataError(f"{csv}: image id {isic_id!r} leads outside {root}; fix or remove that row")
    return table


def read_source(source):
    """Detect the layout of a CSV file or a folder and read it into the common columns."""
    if not source.exists():
        raise DataError(f"{source} does not exist; give a metadata CSV, a data folder or 'synthetic'")
    if source.is_dir() and (source / "benign").is_dir() and (source / "malignant").is_dir():
        print(f"layout: a folder per class in {source}")
        return read_class_folders(source)
    csvs = [source] if source.is_file() else sorted(source.glob("*.csv"))
    if not csvs:
        raise DataError(f"no metadata CSV in {source} and no benign/ and malignant/ folders; "
                        "point --source at the CSV or at a folder with one class per subfolder")
    seen = []
    for csv in csvs:
        try:
            meta = pd.read_csv(csv, dtype=str)
        except pd.errors.EmptyDataError:
            raise DataError(f"{csv} is empty; export the metadata again, with its header row") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise DataError(f"{csv} is not a readable CSV ({error}); export it again as comma-separated UTF-8") \
                from None
        meta.columns = meta.columns.str.strip()
        for name, columns, reader in LAYOUTS:
            if columns <= set(meta.columns):
                print(f"layout: {name}, from {csv} ({len(meta)} rows)")
                return refuse_paths_outside(reader(csv, meta), csv)
        seen.append(f"{csv.name}: {', '.join(meta.columns)}")
    expected = "; ".join(f"{name}: {', '.join(sorted(columns))}" for name, columns, _ in LAYOUTS)
    raise DataError(f"no known layout in {source}. Found columns - {' | '.join(seen)}. "
                    f"Expected one of - {expected}; or benign/ and malignant/ folders of images")


# --- The built-in synthetic set ------------------------------------------------------------------
# Drawn lesions with the ABCD cues dermatologists use: benign ones are small, round, evenly bordered
# and one even brown; malignant ones are larger, asymmetric, with an irregular border and several
# colours. Each cue is drawn from the *other* class one time in five, so the classes overlap and no
# model can be perfect: a model has to weigh the cues together, as on real data.

def draw_lesion(rng, malignant, size):
    def cue():  # does this cue look malignant?
        return malignant != (rng.random() < 0.2)
    large, irregular, multicoloured = cue(), cue(), cue()

    # Skin: a random skin tone with soft blotches and fine grain.
    red = rng.randint(190, 240)
    green = red - rng.randint(35, 65)
    tone = (red, green, green - rng.randint(15, 40))
    blotches = Image.frombytes("L", (6, 6), rng.randbytes(36)).resize((size, size), Image.BICUBIC)
    image = Image.composite(Image.new("RGB", (size, size), tuple(c - 25 for c in tone)),
                            Image.new("RGB", (size, size), tone), blotches)
    grain = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
    image = Image.blend(image, grain, 0.08)

    # The outline: a circle whose radius wobbles with a few random harmonics, then stretched.
    radius = size * (rng.uniform(0.24, 0.36) if large else rng.uniform(0.13, 0.25))
    wobble = 0.12 if irregular else 0.025
    harmonics = [(k, rng.uniform(0, wobble), rng.uniform(0, 2 * math.pi)) for k in range(2, 8)]
    stretch = rng.uniform(1.0, 1.5) if irregular else rng.uniform(1.0, 1.1)
    centre = (size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size)
    outline = []
    for step in range(72):
        angle = 2 * math.pi * step / 72
        r = radius * (1 + sum(a * math.sin(k * angle + phase) for k, a, phase in harmonics))
        outline.append((centre[0] + stretch * r * math.cos(angle), centre[1] + r * math.sin(angle)))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(outline, fill=255)

    # The pigment: one brown, plus blotches of black, blue-grey or red when multicoloured.
    red = rng.randint(90, 150)
    brown = (red, int(red * rng.uniform(0.5, 0.65)), int(red * rng.uniform(0.25, 0.4)))
    pigment = Image.new("RGB", (size, size), brown)
    if multicoloured:
        draw = ImageDraw.Draw(pigment)
        for _ in range(rng.randint(2, 4)):
            colour = rng.choice([(45, 30, 28), (85, 95, 120), (165, 70, 60), (70, 40, 30)])
            x, y = rng.choice(outline)
            x, y = (x + centre[0]) / 2, (y + centre[1]) / 2
            blob = radius * rng.uniform(0.25, 0.5)
            draw.ellipse([x - blob, y - blob * rng.uniform(0.6, 1.4), x + blob, y + blob], fill=colour)
    mask = mask.filter(ImageFilter.GaussianBlur(size / 100 if irregular else size / 40))
    image = Image.composite(pigment.filter(ImageFilter.GaussianBlur(size / 60)), image, mask)
    return image


def make_synthetic(out, count, size, seed):
    """Draw `count` lesions (about a third malignant) into OUT/images; deterministic for a seed."""
    rng = random.Random(seed)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        malignant = rng.random() < 0.35
        image_id = f"SYN_{index:05d}"
        path = folder / f"{image_id}.jpg"
        draw_lesion(rng, malignant, size).save(path, quality=92)
        rows.append({"isic_id": image_id, "image_path": path, "label": int(malignant),
                     "diagnosis": "synthetic " + ("malignant" if malignant else "benign")})
    print(f"drew {count} synthetic lesions of {size}x{size} px into {folder}")
    return pd.DataFrame(rows)


# --- Downloading from the ISIC Archive ---------------------------------------------------------------
# With no data at hand, the public ISIC Archive supplies it. Its API answers a search one page at a time
# (JSON: the page's `results` and the URL of the `next` page); each result names its image files and
# carries its licence, its attribution and its clinical metadata. The download writes what the official
# `isic image download` writes (<isic_id>.jpg, metadata.csv, attribution.txt, licenses/), so the ISIC
# Archive reader above takes it from there, just as it takes a folder made by isic-cli.

ISIC_API = "https://api.isic-archive.com/api/v2"
ISIC_QUERY = "image_type:dermoscopic AND (diagnosis_1:Benign OR diagnosis_1:Malignant)"
ISIC_MAX_IMAGES = 400          # the few-labels case this project is about; as thumbnails, a few MB
ISIC_ID = re.compile(r"ISIC_[0-9]+")  # an id from the network becomes a file name only if it is this
USER_AGENT = "skin-lesion-classifier/1.0 (teaching project; prepare_data.py, Python urllib)"
DOWNLOAD_THREADS = 4           # a few at a time: the archive is a free service that everyone shares
TIMEOUT = 30                   # seconds of silence before a request counts as dropped
MAX_FILE_BYTES = 50 * 2**20    # far above any lesion photo: a larger answer is not what we asked for
ATTEMPTS = 4                   # tries per request
RETRY_DELAY = 1.0              # seconds before the first retry, doubled for each one after
MAX_RETRY_AFTER = 60           # a busy server may ask us to wait (Retry-After), but not for ever
# Set by Ctrl-C, so that downloads under way give up at their next pause instead of sitting it out.
stopping = threading.Event()

# Which file of each image to fetch. The model looks at 128 px (224 for a ResNet), so the archive's
# 256 px thumbnail holds all it can use at about a hundredth of the bytes: 400 thumbnails are a few MB,
# where 400 originals (several megapixels each) are gigabytes that every epoch would spend decoding.
ISIC_FILES = {"thumbnail": "thumbnail_256", "full": "full"}

# The licences the archive uses: name -> (title, URL, what it allows). An image under any other
# licence is not downloaded, because we could not tell you what you may do with it.
LICENSES = {
    "CC-0": ("CC0 1.0 Universal (public domain dedication)", "https://creativecommons.org/publicdomain/zero/1.0/",
             "Free for any use, commercial use included; no credit is required."),
    "CC-BY": ("Creative Commons Attribution 4.0 International", "https://creativecommons.org/licenses/by/4.0/",
              "Free for any use, commercial use included, if you credit the source named in attribution.txt."),
    "CC-BY-NC": ("Creative Commons Attribution-NonCommercial 4.0 International",
                 "https://creativecommons.org/licenses/by-nc/4.0/",
                 "Non-commercial use only, and you must credit the source named in attribution.txt."),
}


class Skipped(Exception):
    """An answer we cannot use (an image, a page); the message says why, and the download goes on."""


def fetch(url):
    """The body of GET url, retried with growing pauses after HTTP 429, 5xx and dropped connections.

    Raises Skipped for an answer that retrying cannot fix, and URLError when the server cannot be reached
    at all (offline, no such host, nothing listening): that is not retried, so the user hears of it at once.
    """
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):  # urllib opens file:// too
        raise Skipped("not an http(s) URL")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    for attempt in range(1, ATTEMPTS + 1):
        pause = RETRY_DELAY * 2 ** (attempt - 1)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return read_capped(response)
        except urllib.error.HTTPError as error:
            if error.code != 429 and error.code < 500:
                raise Skipped(f"HTTP {error.code}") from None
            failure = f"HTTP {error.code}"
            asked = (error.headers.get("Retry-After") or "").strip()  # in seconds (the date form is ignored)
            if asked.isdigit():
                pause = min(int(asked), MAX_RETRY_AFTER)
        except (ConnectionError, TimeoutError, http.client.HTTPException) as error:  # dropped mid-answer
            failure = f"connection dropped ({type(error).__name__})"
        if attempt == ATTEMPTS or stopping.wait(pause):
            raise Skipped(f"{failure}, {attempt} times")


def read_capped(response):
    """The whole body of a response; Skipped if it is too large, and a body cut short counts as dropped."""
    declared = response.headers.get("Content-Length", "")
    declared = int(declared) if declared.isdigit() else None
    # A declared size is checked before reading; else read one byte past the cap, to notice a body that runs on.
    body = b"" if (declared or 0) > MAX_FILE_BYTES else response.read(MAX_FILE_BYTES + 1)
    if max(len(body), declared or 0) > MAX_FILE_BYTES:
        raise Skipped(f"larger than {MAX_FILE_BYTES / 2**20:g} MB")
    if declared is not None and len(body) < declared:
        raise http.client.IncompleteRead(body, declared - len(body))
    return body


def search_isic(api, query, wanted):
    """The first `wanted` results of a search of the archive, following each page's link to the next."""
    url = f"{api.rstrip('/')}/images/search/?" + urlencode({"query": query, "limit": min(wanted, 100)},
                                                            quote_via=quote)
    results = []
    while url and len(results) < wanted:
        try:
            page = json.loads(fetch(url))
            batch, next_url = page["results"], page.get("next")
        except urllib.error.URLError as error:
            raise DataError(f"cannot reach the ISIC Archive at {url.split('?')[0]} ({error.reason}). Without "
                            "internet, use --source synthetic (drawn lesions) or --source PATH (your own data)") \
                from None
        except (Skipped, ValueError, KeyError, TypeError) as error:  # not JSON, or not the JSON we expect
            if not results:
                raise DataError(f"the ISIC Archive search {url} failed ({error}); check --isic-api and --query") \
                    from None
            print(f"skipped the rest of the search: the page {url} is unusable ({error})")
            break
        if not isinstance(batch, list) or not batch:
            break
        results += batch
        url = next_url
    return results[:wanted]


def read_result(result, size):
    """(isic_id, image URL, metadata row) of one search result; Skipped if it is malformed or unsafe."""
    try:
        isic_id, licence = result["isic_id"], result["copyright_license"]
        url = result["files"][ISIC_FILES[size]]["url"]
        row = {**result["metadata"].get("acquisition", {}), **result["metadata"]["clinical"],
               "isic_id": isic_id, "attribution": result["attribution"], "copyright_license": licence}
    except (KeyError, TypeError, AttributeError):
        raise Skipped("a search result without the expected fields") from None
    if not isinstance(isic_id, str) or not ISIC_ID.fullmatch(isic_id):
        raise Skipped("an isic_id that is not ISIC_ and digits")
    if licence not in LICENSES:
        raise Skipped(f"a licence other than {', '.join(LICENSES)}")
    return isic_id, url, row


def download_image(url, path):
    """Fetch one image to `path` by way of a .part file, renamed into place only once it decodes.

    Returns (bytes downloaded, None), or (0, the reason it failed).
    """
    part = path.with_name(path.name + ".part")
    try:
        body = fetch(url)
        part.write_bytes(body)
        if inspect_image(part)[1]:
            return 0, "not a readable image"
        os.replace(part, path)  # atomic: <isic_id>.jpg is either absent or complete
        return len(body), None
    except Skipped as reason:
        return 0, str(reason)
    except urllib.error.URLError as error:
        return 0, f"server unreachable ({error.reason})"
    finally:
        part.unlink(missing_ok=True)  # after a success it is renamed already; after a failure it must go


def download_images(todo, folder):
    """Download {isic_id: url} into `folder`, a few at a time; returns ({isic_id: why it failed}, megabytes)."""
    failures, megabytes, progress = {}, 0.0, Progress("downloaded", len(todo))
    pool = ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS)
    try:
        outcomes = pool.map(download_image, todo.values(), [folder / f"{isic_id}.jpg" for isic_id in todo])
        for done, (isic_id, (size, reason)) in enumerate(zip(todo, outcomes), start=1):
            if reason:
                failures[isic_id] = reason
            megabytes += size / 2**20
            progress.update(done, f"{megabytes:.1f} MB")
    except KeyboardInterrupt:
        stopping.set()
        raise
    finally:
        # After Ctrl-C: drop the queued downloads; those under way finish, or delete their .part file.
        pool.shutdown(cancel_futures=True)
    progress.close()
    return failures, megabytes


def write_isic_metadata(folder, rows):
    """metadata.csv, attribution.txt and one licenses/<licence>.txt per licence used, as isic-cli writes."""
    table = pd.DataFrame(rows)
    first = ["isic_id", "attribution", "copyright_license"]
    columns = first + sorted(set(table.columns) - set(first))
    save_atomically(folder / "metadata.csv", lambda tmp: table[columns].to_csv(tmp, index=False))
    counts = table["attribution"].value_counts()
    sources = sorted(counts.index, key=lambda source: (-counts[source], source))  # most images first
    save_atomically(folder / "attribution.txt",
                    lambda tmp: Path(tmp).write_text("\n\n".join(sources) + "\n", encoding="utf-8"))
    (folder / "licenses").mkdir(exist_ok=True)
    for name in sorted(set(table["copyright_license"])):
        title, url, terms = LICENSES[name]
        text = (f"{title}\n{url}\n\n{terms}\nThe images under it are those with copyright_license "
                f"{name} in metadata.csv.\n")
        save_atomically(folder / "licenses" / f"{name}.txt",
                        lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))


def download_isic_archive(folder, api, query, max_images, balanced, size):
    """Download up to max_images images and their metadata into `folder`; a second run fetches only
    what is missing."""
    searches = [(query, max_images)]
    if balanced:  # one search per class, for half the images each
        searches = [(f"({query}) AND diagnosis_1:Benign", max_images - max_images // 2),
                    (f"({query}) AND diagnosis_1:Malignant", max_images // 2)]
    results = []
    for search, wanted in searches:
        print(f"searching the ISIC Archive ({api}) for up to {wanted} images: {search}")
        results += search_isic(api, search, wanted)
    if not results:
        raise DataError(f"the ISIC Archive at {api} has no images for the search {query!r}; check --query")

    images, skipped = {}, defaultdict(list)
    for result in results:
        try:
            isic_id, url, row = read_result(result, size)
            images.setdefault(isic_id, (url, row))  # an image listed twice is fetched once
        except Skipped as reason:
            skipped[str(reason)].append(repr(result.get("isic_id") if isinstance(result, dict) else result))

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.part"):  # left by a run that was killed before it could clean up
        stale.unlink()
    todo = {isic_id: url for isic_id, (url, _) in images.items() if not (folder / f"{isic_id}.jpg").exists()}
    try:
        failures, megabytes = download_images(todo, folder)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the complete images stay in {folder}, and the same command fetches the rest")
        raise SystemExit(130) from None
    print(f"downloaded {len(todo) - len(failures)} images ({megabytes:.1f} MB) into {folder}; "
          f"{len(images) - len(todo)} were already there")
    for isic_id, reason in failures.items():
        skipped[reason].append(isic_id)
    for reason, names in skipped.items():
        report(f"not downloaded, {reason}", names)
    rows = [row for isic_id, (_, row) in images.items() if isic_id not in failures]
    if not rows:
        raise DataError(f"no image could be downloaded from {api}; the reasons are listed above")
    write_isic_metadata(folder, rows)
    return folder


# --- Cleaning: drop what cannot be used, and say so -------------------------------------------------

def inspect_image(path):
    """(sha1 of the file, None, its shorter side in pixels) if it decodes, else (None, the reason, None)."""
    try:
        data = Path(path).read_bytes()
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
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, DataError) as error:
        return None, f"unreadable ({error})", None


def in_threads(work, items, what, threads, block=256):
    """[work(item) for item in items], in threads, with a progress line. Items go in blocks, so that
    400,000 of them make a few thousand tasks, not 400,000 (each a few kB of memory); Ctrl-C cancels the
    blocks not yet started instead of waiting for them all."""
    blocks = [items[start:start + block] for start in range(0, len(items), block)]
    results, progress = [], Progress(what, len(items))
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        for done in pool.map(lambda part: [work(item) for item in part], blocks):
            results += done
            progress.update(len(results))
    finally:
        pool.shutdown(cancel_futures=True)
    progress.close()
    return results


def report(what, ids):
    if len(ids):
        examples = ", ".join(map(str, list(ids)[:5])) + (", ..." if len(ids) > 5 else "")
        print(f"skipped {len(ids)} rows: {what}: {examples}")


def drop_unusable(table):
    """Keep rows with a benign/malignant label and an image that decodes; add `sha1` and `shorter_side`."""
    unlabelled = table["label"].isna()
    for diagnosis, count in table.loc[unlabelled, "diagnosis"].fillna("(empty)").value_counts().items():
        print(f"excluded {count} rows with diagnosis '{diagnosis}' (neither benign nor malignant)")
    table = table[~unlabelled].copy()
    table["label"] = table["label"].astype(int)

    conflicting = table.groupby("isic_id")["label"].nunique().loc[lambda n: n > 1]
    if len(conflicting):
        raise DataError(f"image id {conflicting.index[0]} appears with both labels "
                        f"({len(conflicting)} such ids); fix the metadata CSV")
    report("listed twice (kept once)", table.loc[table["isic_id"].duplicated(), "isic_id"])
    table = table.drop_duplicates("isic_id")

    # Reading thousands of files is mostly waiting for the disk: threads overlap the waits.
    results = in_threads(inspect_image, table["image_path"].tolist(), "checked", min(8, os.cpu_count() or 1))
    table["sha1"] = [sha1 for sha1, _, _ in results]
    table["shorter_side"] = [side for _, _, side in results]
    reasons = pd.Series([reason for _, reason, _ in results], index=table.index)
    report("image file missing", table.loc[reasons == "missing", "isic_id"])
    unreadable = reasons.notna() & (reasons != "missing")
    report("image file unreadable", [f"{i} {why}" for i, why in zip(table.loc[unreadable, "isic_id"],
                                                                     reasons[unreadable])])
    table = table[reasons.isna()]
    if table.empty:
        raise DataError("no usable rows remain: every row lacked a benign/malignant label or a readable "
                        "image; check that the images sit where the layout expects them")
    return table


# --- Decoding once: resized copies -------------------------------------------------------------------
# A model that looks at 128 or 224 px gains nothing from a 6000x4000 original, but decoding one costs
# a tenth of a second or more: every epoch, for every image, more than the model's own work on a CPU.
# So every image whose shorter side is longer than --copy-size gets a copy with that shorter side,
# decoded and resized once here; the Dataset reads the copy. A little above the training size leaves
# random crops room to zoom in. Originals are never touched. Copies are named after the sha1 of their
# original, so a changed original gets a new copy and a second run reuses what is still valid.

def make_resized_copy(path, target, shorter_side):
    image = load_image(path, shorter_side)  # JPEGs decode straight at 1/2, 1/4 or 1/8 scale
    scale = shorter_side / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    save_atomically(target, lambda tmp: image.save(tmp, format="JPEG", quality=95))


def add_resized_copies(table, out, shorter_side):
    """A `cached_path` column: the copy's path inside OUT, or empty where the original is small enough."""
    folder = out / f"resized-{shorter_side}"
    large = table["shorter_side"] > shorter_side
    targets = {sha1: folder / f"{sha1}.jpg" for sha1 in table.loc[large, "sha1"]}
    # One copy per distinct file (keyed by sha1): two ids of one file must not write the same copy at once.
    todo = list({sha1: (path, targets[sha1]) for sha1, path in zip(table.loc[large, "sha1"],
                                                                    table.loc[large, "image_path"])
                 if not targets[sha1].exists()}.values())
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        try:  # decoding and resizing release Python's lock, so threads use every core
            in_threads(lambda job: make_resized_copy(*job, shorter_side), todo, "resized", os.cpu_count() or 1,
                       block=16)
        except KeyboardInterrupt:
            print(f"\ninterrupted; the copies made so far stay in {folder}, and the same command makes the rest")
            raise SystemExit(130) from None
    print(f"resized copies (shorter side {shorter_side} px) of {int(large.sum())} images in {folder}: "
          f"{len(todo)} made now; {int((~large).sum())} images are small enough to read as they are")
    return [os.path.relpath(targets[sha1], out) if big else None for sha1, big in zip(table["sha1"], large)]


# --- Grouping and splitting --------------------------------------------------------------------------
# Two photos of one lesion look almost alike; if one is in train and the other in test, the test
# measures memory, not skill. So rows that share a lesion, a patient or identical file bytes are
# joined into one group (connected components, by union-find), and whole groups are split.

def assign_groups(table):
    parent = {}

    def root(key):
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for row in table.itertuples():
        keys = [f"image {row.isic_id}", f"file {row.sha1}"]
        keys += [f"{kind} {getattr(row, kind)}" for kind in ("lesion", "patient")
                 if kind in table and pd.notna(getattr(row, kind))]
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])
    # Name each group after the most telling id it has: a patient, else a lesion, else its first image.
    names = {}
    for kind in ("patient", "lesion", "isic_id"):
        if kind in table:
            for isic_id, value in zip(table["isic_id"], table[kind]):
                if pd.notna(value):
                    names.setdefault(root(f"image {isic_id}"), value)
    return [names[root(f"image {i}")] for i in table["isic_id"]]


def subsample(table, max_images, balanced, seed):
    """At most max_images rows, keeping the class ratio (or about 1:1 with balanced)."""
    counts = table["label"].value_counts()
    share = {label: 0.5 if balanced else count / len(table) for label, count in counts.items()}
    keep = [table[table["label"] == label].sample(n=min(count, round(max_images * share[label])), random_state=seed)
            for label, count in counts.items()]
    return pd.concat(keep).sort_index()


def assign_splits(table, fractions, seed):
    """Give each group a split, class by class, so that every split gets its share of each class.

    Groups are dealt out largest first (so big patients do not unbalance the end), each to the split
    that is furthest below its target number of images.
    """
    rng = random.Random(seed)
    split_of_group = {}
    group_label = table.groupby("group")["label"].max()        # a group with any malignant is malignant
    group_size = table.groupby("group").size()
    for label in (0, 1):
        groups = sorted(group_label.index[group_label == label])
        rng.shuffle(groups)
        groups.sort(key=lambda g: -group_size[g])                 # stable: shuffled within equal sizes
        target = {split: share * group_size[groups].sum() for split, share in fractions.items()}
        filled = dict.fromkeys(fractions, 0)
        for group in groups:
            split = max(fractions, key=lambda s: (target[s] - filled[s]) / target[s] if target[s] else -1)
            split_of_group[group] = split
            filled[split] += group_size[group]
    return table["group"].map(split_of_group)


def check_both_classes(table, test_only):
    """A model needs both classes to learn from, and every split needs both to be scored."""
    for split, rows in table.groupby("split"):
        for label, name in ((0, "benign"), (1, "malignant")):
            if label in set(rows["label"]):
                continue
            if test_only:
                print(f"warning: no {name} images, so AUC and {'sensitivity' if label else 'specificity'} "
                      "will be undefined on this test set")
            elif label not in set(table["label"]):
                raise DataError(f"no {name} images at all ({len(table)} {'malignant' if label == 0 else 'benign'});"
                                " a classifier needs examples of both classes")
            else:
                raise DataError(f"the {split} split has no {name} images: only "
                                f"{table.loc[table['label'] == label, 'group'].nunique()} {name} groups in all; "
                                "add images, or change --val-fraction / --test-fraction")


def print_counts(table):
    counts = pd.crosstab(table["split"], table["label"].map({0: "benign", 1: "malignant"}), margins=True,
                         margins_name="total")
    print(counts.reindex([s for s in ("train", "val", "test", "total") if s in counts.index]).to_string())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="isic-archive",
                        help="'isic-archive' (the default: download from it), 'synthetic' (offline), "
                             "a metadata CSV or a data folder")
    parser.add_argument("--out", default="data", help="folder for labels.csv (default: data)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the subset, the split and the synthetic set")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--test-only", action="store_true", help="put every row in 'test' (an external test set)")
    parser.add_argument("--max-images", type=int, default=None,
                        help=f"draw a stratified subset of this size (isic-archive: download this many, "
                             f"default {ISIC_MAX_IMAGES})")
    parser.add_argument("--balanced", action="store_true", help="about half of each class, in the subset or download")
    parser.add_argument("--query", default=ISIC_QUERY,
                        help="isic-archive: the search, in the archive's syntax (default: dermoscopic images "
                             "diagnosed benign or malignant)")
    parser.add_argument("--isic-size", choices=ISIC_FILES, default="thumbnail",
                        help="isic-archive: 'thumbnail' (256 px, the default) or 'full' (the original files)")
    parser.add_argument("--isic-api", default=ISIC_API, help=f"isic-archive: the API's address (default: {ISIC_API})")
    parser.add_argument("--copy-size", type=int, default=256, metavar="PX",
                        help="store a copy of every larger image, its shorter side this long, for training to "
                             "read instead of decoding the original each epoch; keep it above --img-size "
                             "(default 256; 0: always read the originals)")
    parser.add_argument("--synthetic-count", type=int, default=600, help="images in the synthetic set")
    parser.add_argument("--synthetic-size", type=int, default=128, help="side of a synthetic image, in pixels")
    args = parser.parse_args()
    if args.source == "isic-archive":
        args.max_images = args.max_images or ISIC_MAX_IMAGES

    out = Path(args.out)
    try:
        if args.source == "synthetic":
            table = make_synthetic(out, args.synthetic_count, args.synthetic_size, args.seed)
        elif args.source == "isic-archive":
            # Each size gets its own folder, so that a later run never mixes thumbnails and originals.
            folder = out / f"isic-archive-{args.isic_size}"
            table = read_source(download_isic_archive(folder, args.isic_api, args.query, args.max_images,
                                                      args.balanced, args.isic_size))
        else:
            table = read_source(Path(args.source))
        table = drop_unusable(table)
        table["group"] = assign_groups(table)
        if args.max_images:
            table = subsample(table, args.max_images, args.balanced, args.seed)
        if args.test_only:
            table["split"] = "test"
        else:
            fractions = {"train": 1 - args.val_fraction - args.test_fraction,
                         "val": args.val_fraction, "test": args.test_fraction}
            table["split"] = assign_splits(table, fractions, args.seed)
        check_both_classes(table, args.test_only)
        out.mkdir(parents=True, exist_ok=True)
        if args.copy_size:
            table["cached_path"] = add_resized_copies(table, out, args.copy_size)
    except DataError as error:
        parser.exit(2, f"error: {error}\n")

    # Paths inside OUT are stored relative to it (the folder can move); others absolute.
    inside = os.path.abspath(out) + os.sep
    table["image_path"] = [os.path.relpath(p, out) if os.path.abspath(p).startswith(inside) else os.path.abspath(p)
                           for p in table["image_path"]]
    columns = ["isic_id", "image_path", "label", "split", "group", "diagnosis"]
    columns += ["cached_path"] if args.copy_size else []
    # Write to a temporary name and rename: a crash never leaves a half-written labels.csv behind.
    save_atomically(out / "labels.csv", lambda tmp: table[columns].to_csv(tmp, index=False))
    print_counts(table)
    print(f"wrote {out / 'labels.csv'} ({len(table)} images, {table['group'].nunique()} groups)")


if __name__ == "__main__":
    main()
