"""Downloading a subset of the public ISIC Archive; a first reading can skip it.

prepare_data.py with no --source (or --source isic-archive) calls download_isic_archive, which writes the
folder that the official `isic image download` writes; prepare_data.py then reads it like any other.
"""
import http.client
import json
import os
import re
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlencode, urlsplit

import pandas as pd

from helpers.files import DataError, Progress, report_skipped, save_atomically
from helpers.images import inspect_image


# With no data at hand, the public ISIC Archive supplies it. Its API answers a search one page at a time
# (JSON: the page's `results` and the URL of the `next` page); each result names its image files and
# carries its licence, its attribution and its clinical metadata. The download writes what the official
# `isic image download` writes (<isic_id>.jpg, metadata.csv, attribution.txt, licenses/), so
# prepare_data.py's ISIC Archive reader takes it from there, just as it takes a folder made by isic-cli.
#
# The search language is the archive's (Lucene-like): FIELD:VALUE terms joined by AND and OR, which must
# be upper-case; values are case-sensitive (diagnosis_1:Benign, not benign). The diagnosis is searched in
# diagnosis_1 (Benign, Malignant, Indeterminate) to diagnosis_5 (ever finer); `benign_malignant` exists
# only in old metadata exports and cannot be searched. Results come oldest first (by the date the image
# was added), so a search for 400 images gets the archive's 400 oldest matches.

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
# Files keep the extension of their URL, as isic-cli names them: originals can be .jpg, .png or .tif.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

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
                raise Skipped(f"HTTP {error.code}{server_message(error)}") from None
            failure = f"HTTP {error.code}"
            asked = (error.headers.get("Retry-After") or "").strip()  # in seconds (the date form is ignored)
            if asked.isdigit():
                pause = min(int(asked), MAX_RETRY_AFTER)
        except (ConnectionError, TimeoutError, http.client.HTTPException) as error:  # dropped mid-answer
            failure = f"connection dropped ({type(error).__name__})"
        if attempt == ATTEMPTS or stopping.wait(pause):
            raise Skipped(f"{failure}, {attempt} times")


def server_message(error):
    """': <message>' where the archive explains an error in its JSON answer ({"message": ...}), else ''."""
    try:
        message = json.loads(error.read(10_000)).get("message")
    except (OSError, ValueError, AttributeError, http.client.HTTPException):
        return ""
    return f": {message}" if isinstance(message, str) else ""


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
            if not results and str(error).startswith("HTTP 400"):  # the archive did not understand the query
                raise DataError(f"the ISIC Archive refused the search {query!r} ({error}); fix --query: "
                                "upper-case AND/OR, case-sensitive values, diagnosis_1 to diagnosis_5 "
                                "(see prepare_data.py --help)") from None
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


def file_name(isic_id, url):
    """<isic_id> plus the extension of the image's URL, as isic-cli names it (.jpg when it has none we know)."""
    suffix = PurePosixPath(urlsplit(url).path).suffix
    return isic_id + (suffix if suffix.lower() in IMAGE_SUFFIXES else ".jpg")


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
        os.replace(part, path)  # atomic: the image file is either absent or complete
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
        outcomes = pool.map(download_image, todo.values(), [folder / file_name(i, url) for i, url in todo.items()])
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


def licence_text(api, name):
    """The licence's full legal text, as the archive serves it to isic-cli (no login needed); if it cannot be
    had, a short summary with the licence's address."""
    try:
        return fetch(f"{api.rstrip('/')}/zip-download/license-file/{name}/").decode("utf-8")
    except (Skipped, urllib.error.URLError, UnicodeDecodeError) as error:
        print(f"the text of licence {name} could not be fetched ({error}); wrote a summary with its address")
        title, url, terms = LICENSES[name]
        return (f"{title}\n{url}\n\n{terms}\nThe images under it are those with copyright_license "
                f"{name} in metadata.csv.\n")


def write_isic_metadata(folder, rows, api):
    """metadata.csv, attribution.txt and one licenses/<licence>.txt per licence used, as isic-cli writes them."""
    table = pd.DataFrame(rows)
    first = ["isic_id", "attribution", "copyright_license"]
    columns = first + sorted(set(table.columns) - set(first))
    save_atomically(folder / "metadata.csv", lambda tmp: table[columns].to_csv(tmp, index=False))
    # Sources with most images first, then by name; "Anonymous" last.
    counts = table["attribution"].value_counts()
    sources = sorted(counts.index, key=lambda source: (source == "Anonymous", -counts[source], source))
    save_atomically(folder / "attribution.txt",
                    lambda tmp: Path(tmp).write_text("\n\n".join(sources), encoding="utf-8"))
    (folder / "licenses").mkdir(exist_ok=True)
    for name in sorted(set(table["copyright_license"])):
        text = licence_text(api, name)
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
    todo = {isic_id: url for isic_id, (url, _) in images.items() if not (folder / file_name(isic_id, url)).exists()}
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
        report_skipped(f"not downloaded, {reason}", names)
    rows = [row for isic_id, (_, row) in images.items() if isic_id not in failures]
    if not rows:
        raise DataError(f"no image could be downloaded from {api}; the reasons are listed above")
    write_isic_metadata(folder, rows, api)
    return folder


def add_options(parser):
    """prepare_data.py's options for the download: the search, the size of the files, the API's address."""
    parser.add_argument("--query", default=ISIC_QUERY,
                        help="isic-archive: the search, in the archive's syntax (default: dermoscopic images "
                             "diagnosed benign or malignant). FIELD:VALUE terms joined by upper-case AND / OR; "
                             "values are case-sensitive (diagnosis_1:Benign); the diagnosis is in diagnosis_1 "
                             "(Benign, Malignant, Indeterminate) to diagnosis_5; benign_malignant exists only in "
                             "old exports and cannot be searched. Results come oldest first")
    parser.add_argument("--isic-size", choices=ISIC_FILES, default="thumbnail",
                        help="isic-archive: 'thumbnail' (256 px, the default) or 'full' (the original files)")
    parser.add_argument("--isic-api", default=ISIC_API, help=f"isic-archive: the API's address (default: {ISIC_API})")
