"""prepare_data.py --source isic-archive, against a stand-in for the ISIC Archive API on 127.0.0.1."""
import json
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from urllib.parse import parse_qs, urlencode, urlsplit

import pandas as pd
import pytest
from PIL import Image

import prepare_data
from conftest import run_main
from helpers import files, isic_archive
from test_prepare_data import assert_groups_never_cross_splits

SEARCH = "/api/v2/images/search/"
LICENCE_FILE = "/api/v2/zip-download/license-file/{}/"
# What the archive serves as each licence's legal text (the real files are a few pages long).
LEGAL_TEXT = {"CC-0": "Creative Commons Legal Code\n\nCC0 1.0 Universal\n...",
              "CC-BY": "Attribution 4.0 International\n\n=======\n...",
              "CC-BY-NC": "Attribution-NonCommercial 4.0 International\n\n=======\n..."}
PAGE_SIZE = 5  # the stand-in serves at most this many results a page, whatever `limit` asks for
GOOD = [f"ISIC_{i:07d}" for i in range(1, 15)]  # the images that should arrive: 1-12, Indeterminate, legacy


def jpeg(colour, size):
    buffer = BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def noise_jpeg(side):
    pixels = random.Random(0).randbytes(side * side * 3)
    buffer = BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


class FakeArchive:
    """Search results served a page at a time, image files, and failures on cue; counts every request."""

    def __init__(self, base):
        self.base, self.api = base, base + "/api/v2"
        self.results, self.files, self.thumbnail = [], {}, {}  # thumbnail: isic_id -> its path
        self.cues = {}             # path -> answers to give before the file: 500, 429, "cut", "hang up"
        self.broken_pages = set()  # page offsets answered with something that is not JSON
        self.broken = set()        # "licence files": answered 404
        self.held, self.release = set(), threading.Event()  # paths that wait for `release` (10 s at most)
        self.requests, self.searches, self.user_agents = Counter(), [], set()
        self.lock = threading.Lock()

    def add(self, isic_id, clinical, licence="CC-BY", attribution="Clinic A", thumbnail=None, cues=(),
            full_suffix=".jpg"):
        name = f"image{len(self.results)}"
        self.files[f"/thumbs/{name}.jpg"] = thumbnail or jpeg((len(self.results) * 15, 90, 140), (32, 24))
        full = BytesIO()
        Image.new("RGB", (96, 72), (len(self.results) * 15, 90, 140)).save(full, format=full_suffix[1:].replace(
            "jpg", "jpeg").replace("tif", "tiff"))
        self.files[f"/full/{name}{full_suffix}"] = full.getvalue()
        self.thumbnail[isic_id] = f"/thumbs/{name}.jpg"
        self.cues[f"/thumbs/{name}.jpg"] = list(cues)
        self.results.append({
            "isic_id": isic_id, "copyright_license": licence, "attribution": attribution, "public": True,
            "metadata": {"acquisition": {"image_type": "dermoscopic"}, "clinical": clinical},
            "files": {"full": {"url": f"{self.base}/full/{name}{full_suffix}", "size": 0},
                      "thumbnail_256": {"url": f"{self.base}/thumbs/{name}.jpg", "size": 0}}})

    def fill(self):
        for i in range(1, 13):
            cues = {3: [500], 4: [503, 503], 5: [429], 7: ["cut"], 8: ["hang up"]}.get(i, [])
            self.add(f"ISIC_{i:07d}", {"diagnosis_1": "Malignant" if i % 3 == 0 else "Benign",
                                       "patient_id": f"IP_{(i - 1) // 2}", "lesion_id": f"IL_{i}"},
                     licence=["CC-BY", "CC-BY-NC", "CC-0"][i % 3],
                     attribution="Clinic A" if i <= 8 else "Hospital B" if i <= 11 else "Zeta Clinic",
                     cues=cues, full_suffix={2: ".png", 3: ".tif"}.get(i, ".jpg"))  # originals come in 3 formats
        self.add("ISIC_0000013", {"diagnosis_1": "Indeterminate", "patient_id": "IP_6"}, attribution="Anonymous")
        self.add("ISIC_0000014", {"benign_malignant": "malignant"}, licence="CC-0", attribution="Anonymous")
        self.add("ISIC_0000015", {"diagnosis_1": "Benign"}, thumbnail=b"this is not a JPEG at all")
        self.add("ISIC_0000016", {"diagnosis_1": "Benign"}, thumbnail=noise_jpeg(200))  # over the size cap
        self.add("ISIC_0000017", {"diagnosis_1": "Benign"}, licence="All rights reserved")
        self.add("../../x", {"diagnosis_1": "Benign"})

    def answer(self, handler):
        url = urlsplit(handler.path)
        with self.lock:
            self.requests[url.path] += 1
            self.user_agents.add(handler.headers["User-Agent"])
            cues = self.cues.get(url.path)
            cue = cues.pop(0) if cues else None
        if url.path == SEARCH:
            return self.search(handler, {key: values[0] for key, values in parse_qs(url.query).items()})
        # Licence texts, served as the archive serves them: text/plain, 404 for a name it does not know.
        if url.path.startswith(LICENCE_FILE.format("").rstrip("/")):
            name = url.path.split("/")[-2]
            if name not in LEGAL_TEXT or "licence files" in self.broken:
                return handler.send_error(404)
            return send(handler, LEGAL_TEXT[name].encode(), "text/plain")
        if url.path in self.held:
            self.release.wait(timeout=10)
        if cue == "hang up":
            return                                     # close the connection without a word
        if cue in (500, 503):
            return handler.send_error(cue)
        if cue == 429:
            handler.send_response(429)
            handler.send_header("Retry-After", "3600")  # an hour: the downloader must cap that
            handler.end_headers()
            return
        if url.path not in self.files:
            return handler.send_error(404)
        body = self.files[url.path]
        send(handler, body, "image/jpeg", cut=cue == "cut")

    def search(self, handler, params):
        with self.lock:
            self.searches.append(params)
        if params["query"].count("(") != params["query"].count(")") or "benign_malignant:" in params["query"]:
            # What the archive answers to a query it cannot parse (isic/urls.py: ImageSearchParseError).
            body = json.dumps({"message": "Could not parse search query."}).encode()
            handler.send_response(400)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            return handler.wfile.write(body)
        start, limit = int(params.get("cursor", 0)), min(int(params["limit"]), PAGE_SIZE)
        if start in self.broken_pages:
            return send(handler, b"<html>502 Bad Gateway</html>", "text/html")
        wanted = next((label for label in ("Benign", "Malignant")
                       if params["query"].endswith(f" AND diagnosis_1:{label}")), None)
        matching = [r for r in self.results if wanted in (None, r["metadata"]["clinical"].get("diagnosis_1"))]
        following = start + limit
        next_url = (f"{self.api}/images/search/?{urlencode({**params, 'cursor': following})}"
                    if following < len(matching) else None)
        page = {"count": len(matching), "next": next_url, "previous": None,
                "results": matching[start:following]}
        send(handler, json.dumps(page).encode(), "application/json")


def send(handler, body, content_type, cut=False):
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:len(body) // 2] if cut else body)  # cut: the connection drops mid-file
    except (BrokenPipeError, ConnectionResetError):
        pass  # the downloader hung up first, e.g. on a file over its size cap


class NotedPauses(threading.Event):
    """prepare_data's Ctrl-C event, but one that notes each pause down instead of waiting it out."""

    def __init__(self):
        super().__init__()
        self.pauses = []

    def wait(self, timeout=None):
        self.pauses.append(timeout)
        return self.is_set()


@pytest.fixture
def archive(monkeypatch):
    """The stand-in archive on a free port, for one test; the downloader's pauses are noted, not waited."""
    fake = None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            fake.answer(self)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake = FakeArchive(f"http://127.0.0.1:{server.server_address[1]}")
    fake.fill()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setattr(isic_archive, "stopping", NotedPauses())
    monkeypatch.setattr(isic_archive, "MAX_FILE_BYTES", 2**15)
    monkeypatch.setattr(isic_archive, "TIMEOUT", 5)
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def download(monkeypatch, archive, out, *extra):
    return run_main(prepare_data, "--isic-api", archive.api, "--out", out, *extra, monkeypatch=monkeypatch)


def test_default_source_downloads_the_isic_cli_layout_then_labels_and_splits(archive, tmp_path, monkeypatch,
                                                                            capsys):
    out = tmp_path / "out"
    # No --source: the ISIC Archive is the default; --no-balanced: one search, in the archive's own order.
    assert download(monkeypatch, archive, out, "--no-balanced") == 0
    output = capsys.readouterr().out
    folder = out / "isic-archive-thumbnail"

    # The images, each the 256 px thumbnail byte for byte, and nothing half-written or out of place.
    assert sorted(path.name for path in folder.glob("*.jpg")) == [f"{isic_id}.jpg" for isic_id in GOOD]
    for isic_id in GOOD:
        assert (folder / f"{isic_id}.jpg").read_bytes() == archive.files[archive.thumbnail[isic_id]]
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.tmp"))
    assert [path for path in tmp_path.rglob("*") if not path.is_relative_to(out)] == []
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [f"{isic_id}.jpg" for isic_id in GOOD] + ["attribution.txt", "licenses", "metadata.csv"])

    meta = pd.read_csv(folder / "metadata.csv", dtype=str)
    assert list(meta.columns[:3]) == ["isic_id", "attribution", "copyright_license"]
    assert {"diagnosis_1", "benign_malignant", "patient_id", "lesion_id", "image_type"} <= set(meta.columns)
    assert sorted(meta["isic_id"]) == GOOD
    row = meta.set_index("isic_id").loc["ISIC_0000003"]
    assert (row["diagnosis_1"], row["patient_id"], row["lesion_id"], row["copyright_license"]) == (
        "Malignant", "IP_1", "IL_3", "CC-BY")
    assert meta.set_index("isic_id").loc["ISIC_0000014", "benign_malignant"] == "malignant"
    # As isic-cli writes it: sources by number of images (Clinic A 8, Hospital B 3, Zeta Clinic 1), then
    # Anonymous (2) last, a blank line between them and no newline at the end.
    assert (folder / "attribution.txt").read_text() == "Clinic A\n\nHospital B\n\nZeta Clinic\n\nAnonymous"
    # Each licence's full legal text, as the archive serves it, for each licence used.
    assert sorted(path.name for path in (folder / "licenses").iterdir()) == ["CC-0.txt", "CC-BY-NC.txt", "CC-BY.txt"]
    for name, text in LEGAL_TEXT.items():
        assert (folder / "licenses" / f"{name}.txt").read_text() == text

    # What the server saw: 18 results in four pages, each failing image asked for again, nothing unsafe.
    assert archive.requests[SEARCH] == 4
    assert [archive.requests[LICENCE_FILE.format(name)] for name in LEGAL_TEXT] == [1, 1, 1]
    assert archive.searches[0] == {"query": isic_archive.ISIC_QUERY, "limit": "100"}
    assert [archive.requests[archive.thumbnail[f"ISIC_{i:07d}"]] for i in (1, 3, 4, 5, 7, 8)] == [1, 2, 3, 2, 2, 2]
    assert archive.requests[archive.thumbnail["../../x"]] == 0
    assert archive.requests[archive.thumbnail["ISIC_0000017"]] == 0
    assert not any(archive.requests[path] for path in archive.files if path.startswith("/full/"))
    assert archive.user_agents == {isic_archive.USER_AGENT}
    # Back-off: 1 s, doubled on the next failure; the 429's hour-long Retry-After capped at a minute.
    assert sorted(isic_archive.stopping.pauses) == [1, 1, 1, 1, 2, isic_archive.MAX_RETRY_AFTER]

    assert "downloaded 14 images" in output and "0 were already there" in output
    assert "an isic_id that is not ISIC_ and digits: '../../x'" in output
    assert "a licence other than CC-0, CC-BY, CC-BY-NC: 'ISIC_0000017'" in output
    assert "not a readable image: ISIC_0000015" in output
    assert "larger than 0.03125 MB: ISIC_0000016" in output
    assert "layout: ISIC Archive" in output
    assert "excluded 1 rows with diagnosis 'Indeterminate'" in output

    labels = pd.read_csv(out / "labels.csv", dtype={"group": str}).set_index("isic_id")
    assert labels["label"].to_dict() == {**{f"ISIC_{i:07d}": int(i % 3 == 0) for i in range(1, 13)},
                                         "ISIC_0000014": 1}
    assert labels["group"].to_dict() == {**{f"ISIC_{i:07d}": f"IP_{(i - 1) // 2}" for i in range(1, 13)},
                                         "ISIC_0000014": "ISIC_0000014"}
    assert (labels["image_path"] == "isic-archive-thumbnail/" + labels.index + ".jpg").all()
    assert_groups_never_cross_splits(labels)


def test_an_interrupted_download_resumes_with_only_what_is_missing(archive, tmp_path, monkeypatch, capsys):
    class CtrlCAfterThreeImages(files.Progress):
        def update(self, done, detail=""):
            if done == 3:
                threading.Timer(0.3, archive.release.set).start()  # then the downloads under way may finish
                raise KeyboardInterrupt

    # Images 7 and later wait at the server until the interruption, so that some are under way then.
    archive.held = {archive.thumbnail[f"ISIC_{i:07d}"] for i in range(7, 17)}
    out, folder = tmp_path / "out", tmp_path / "out" / "isic-archive-thumbnail"
    monkeypatch.setattr(isic_archive, "Progress", CtrlCAfterThreeImages)
    assert download(monkeypatch, archive, out, "--source", "isic-archive", "--no-balanced") == 130
    assert "interrupted" in capsys.readouterr().out
    assert isic_archive.stopping.is_set()  # downloads still under way stop at their next pause
    present = {path.stem for path in folder.glob("*.jpg")}
    assert {"ISIC_0000001", "ISIC_0000002", "ISIC_0000003"} <= present
    assert not present & {f"ISIC_{i:07d}" for i in range(11, 15)}  # never started: cancelled
    for isic_id in present:  # whatever is there is complete
        assert (folder / f"{isic_id}.jpg").read_bytes() == archive.files[archive.thumbnail[isic_id]]
    assert not list(folder.glob("*.part")) and not (folder / "metadata.csv").exists()
    assert not (out / "labels.csv").exists()

    # A run killed outright leaves .part files behind: the next run must not take one for an image, and
    # must clear them away, also one of an image it will not fetch.
    stale = sorted(set(GOOD) - present)[0]
    (folder / f"{stale}.jpg.part").write_bytes(archive.files[archive.thumbnail[stale]][:100])
    (folder / "ISIC_0000017.jpg.part").write_bytes(b"\xff\xd8\xff")
    monkeypatch.setattr(isic_archive, "Progress", files.Progress)
    monkeypatch.setattr(isic_archive, "stopping", NotedPauses())
    archive.held, archive.requests = set(), Counter()
    assert download(monkeypatch, archive, out, "--source", "isic-archive", "--no-balanced") == 0
    output = capsys.readouterr().out

    asked = {isic_id for isic_id, path in archive.thumbnail.items() if archive.requests[path]}
    assert asked == set(GOOD) - present | {"ISIC_0000015", "ISIC_0000016"}  # and those that failed before
    assert f"downloaded {len(GOOD) - len(present)} images" in output
    assert f"{len(present)} were already there" in output
    assert not list(folder.glob("*.part"))
    assert (folder / f"{stale}.jpg").read_bytes() == archive.files[archive.thumbnail[stale]]
    assert sorted(pd.read_csv(folder / "metadata.csv")["isic_id"]) == GOOD
    assert len(pd.read_csv(out / "labels.csv")) == len(GOOD) - 1  # all but the Indeterminate one


def test_an_unreachable_archive_fails_fast_with_code_2(tmp_path, monkeypatch, capsys):
    with socket.socket() as probe:  # a port that nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.time()
    code = run_main(prepare_data, "--isic-api", f"http://127.0.0.1:{port}/api/v2", "--out", tmp_path / "out",
                    monkeypatch=monkeypatch)
    error = capsys.readouterr().err
    assert code == 2
    assert time.time() - started < 5
    assert f"http://127.0.0.1:{port}/api/v2/images/search/" in error
    assert "--source synthetic" in error and "--source PATH" in error
    assert not (tmp_path / "out" / "labels.csv").exists()


def test_by_default_each_class_is_searched_for_half(archive, tmp_path, monkeypatch):
    """The archive lists its oldest images first, mostly benign: a download asks for half of each class."""
    out = tmp_path / "out"
    # Six images are too few for three splits with both classes: --test-only keeps this about the download.
    assert download(monkeypatch, archive, out, "--max-images", 6, "--test-only") == 0
    first_pages = [search["query"] for search in archive.searches]
    assert first_pages == [f"({isic_archive.ISIC_QUERY}) AND diagnosis_1:Benign",
                           f"({isic_archive.ISIC_QUERY}) AND diagnosis_1:Malignant"]
    meta = pd.read_csv(out / "isic-archive-thumbnail" / "metadata.csv")
    assert sorted(meta["isic_id"]) == [f"ISIC_{i:07d}" for i in (1, 2, 3, 4, 6, 9)]
    assert pd.read_csv(out / "labels.csv")["label"].sum() == 3


def test_full_size_goes_to_its_own_folder_and_keeps_each_files_extension(archive, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert download(monkeypatch, archive, out, "--max-images", 3, "--no-balanced", "--isic-size", "full",
                    "--test-only") == 0
    folder = out / "isic-archive-full"
    names = ["ISIC_0000001.jpg", "ISIC_0000002.png", "ISIC_0000003.tif"]  # as isic-cli names them
    assert sorted(path.name for path in folder.iterdir() if path.name.startswith("ISIC_")) == names
    assert Image.open(folder / "ISIC_0000003.tif").size == (96, 72)
    assert not (out / "isic-archive-thumbnail").exists()
    # ... and the folder reader finds each of them.
    labels = pd.read_csv(out / "labels.csv").set_index("isic_id")
    assert sorted(labels["image_path"]) == [f"isic-archive-full/{name}" for name in names]


def test_a_query_the_archive_cannot_parse_shows_its_message(archive, tmp_path, monkeypatch, capsys):
    code = download(monkeypatch, archive, tmp_path / "out", "--query", "benign_malignant:malignant")
    error = capsys.readouterr().err
    assert code == 2 and len(error.strip().splitlines()) == 1
    assert "HTTP 400: Could not parse search query." in error and "benign_malignant:malignant" in error
    assert "diagnosis_1" in error  # and how to fix it


def test_without_the_licence_texts_a_summary_with_the_address_is_written(archive, tmp_path, monkeypatch, capsys):
    archive.broken = {"licence files"}
    assert download(monkeypatch, archive, tmp_path / "out", "--no-balanced", "--test-only") == 0
    assert "the text of licence CC-BY-NC could not be fetched (HTTP 404" in capsys.readouterr().out
    non_commercial = (tmp_path / "out" / "isic-archive-thumbnail" / "licenses" / "CC-BY-NC.txt").read_text()
    assert "https://creativecommons.org/licenses/by-nc/4.0/" in non_commercial and "Non-commercial" in non_commercial


def test_a_page_that_is_not_json_is_reported(archive, tmp_path, monkeypatch, capsys):
    archive.broken_pages = {5}  # the second page
    assert download(monkeypatch, archive, tmp_path / "a", "--no-balanced", "--test-only") == 0
    output = capsys.readouterr().out
    assert "skipped the rest of the search" in output and "cursor=5" in output
    assert sorted(pd.read_csv(tmp_path / "a" / "isic-archive-thumbnail" / "metadata.csv")["isic_id"]) == GOOD[:5]

    archive.broken_pages = {0}  # the first: nothing to go on with
    assert download(monkeypatch, archive, tmp_path / "b") == 2
    assert "check --isic-api and --query" in capsys.readouterr().err
