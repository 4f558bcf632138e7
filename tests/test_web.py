"""The web page (web/) in headless Chromium: it scores the exported model's images as evaluate.py --predict
--no-tta does, metadata included, says why a bad file gives no number, and asks nothing of any other origin.
Without Chromium, its driver, selenium or web/node_modules these tests skip, except under CI=true, where they
fail (.ci/run installs them)."""
import math
import os
import re

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
from PIL import Image

from conftest import PHOTO_METADATA
from helpers import browser
from helpers.images import load_image

# What the page may differ from Python by: decoding in the browser rather than PIL (JPEG, EXIF), and
# float32 arithmetic in WebAssembly.
TOLERANCE = 0.005


@pytest.fixture(scope="module")
def page():
    reason = browser.missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser tests cannot run under CI: {reason}")
        pytest.skip(f"the browser tests cannot run here: {reason}")
    opened = browser.Page()
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def served(photos, tmp_path_factory):
    """The page, the baseline's export as model.onnx and the photos (and two bad files) on one origin."""
    onnx_file, folder, names, _ = photos
    bad = tmp_path_factory.mktemp("bad")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("a text file named as an image\n")
    Image.new("RGB", (64, 64), (20, 200, 40)).save(bad / "green.png")  # no skin at all
    files = {"model.onnx": onnx_file, **{f"images/{name}": folder / name for name in names},
             "images/empty.jpg": bad / "empty.jpg", "images/notes.jpg": bad / "notes.jpg",
             "images/green.png": bad / "green.png"}
    with browser.serving(browser.site(tmp_path_factory.mktemp("site"), files)) as origin:
        yield origin


def page_results(page, origin, names, prefix=""):
    """{name: the result element's data} for each photo whose name starts with prefix, scored from the page's
    address with its metadata."""
    results = {}
    for number, name in enumerate(names):
        if name.startswith(prefix):
            age, sex, site = PHOTO_METADATA[number % len(PHOTO_METADATA)]
            results[name] = page.score(origin, f"images/{name}", age=age, sex=sex, site=site)
    return results


def gaps(results, expected):
    return {name: abs(float(result["probability"]) - expected[name.rsplit(".", 1)[0]])
            for name, result in results.items()}


def test_the_page_scores_as_predict_no_tta(page, served, photos):
    onnx_file, _, names, expected = photos
    results = page_results(page, served, names)
    assert all(result["status"] == "done" for result in results.values()), results
    found = gaps(results, expected)
    assert max(found.values()) < TOLERANCE, found
    assert max(expected.values()) - min(expected.values()) > 0.3  # the model tells these images apart
    threshold = float({p.key: p.value for p in onnx.load(onnx_file).metadata_props}["threshold"])
    for name, result in results.items():
        assert result["decision"] == ("malignant" if float(result["probability"]) >= threshold else "benign")
    # "elbow" is no site and 150 no age the model knows: scored as unknown, and said so; and the images that
    # --predict flags as unlike the training ones (the grayscale ones, for this model) are flagged here too.
    warnings = {name: result["warning"] for name, result in results.items() if "warning" in result}
    given = [PHOTO_METADATA[number % len(PHOTO_METADATA)] for number in range(len(names))]
    unknown = {name for name, (age, _, site) in zip(names, given) if age == "150" or site == "elbow"}
    predicted = pd.read_csv(photos[1].parent / "out" / "predictions.csv").set_index("isic_id")["unlike_training"]
    flagged = {name for name in names if predicted[name.rsplit(".", 1)[0]]}
    assert flagged and set(warnings) == unknown | flagged, (warnings, flagged)
    for name, warning in warnings.items():
        assert warning.startswith("this image is unlike any the model learnt from") == (name in flagged), warning
        rest = warning.partition("; ")[2] if name in flagged else warning  # the flag's words have no ';'
        assert rest == "" and name not in unknown or re.fullmatch(
            r"(site 'elbow'|age '150') is not a value the model knows; scored as unknown", rest), warning
    shown = page.driver.find_element("id", "verdict").text
    assert shown.startswith(f"P(malignant) = {float(results[names[-1]]['probability']):.3f}")  # as a person sees it


# Chromium has given up imageOrientation "none" (it reads as "from-image"): to ignore the tag, this takes it out
# of the file before decoding, dropping every APP1 segment (marker FF E1, where EXIF lives) of a JPEG.
WITHOUT_EXIF = """
    const decode = window.createImageBitmap;
    window.createImageBitmap = async (blob, options) => {
      const bytes = new Uint8Array(await blob.arrayBuffer()), kept = [bytes.subarray(0, 2)];
      let at = 2;
      while (at + 4 <= bytes.length && bytes[at] === 0xFF && bytes[at + 1] !== 0xDA) {
        const end = at + 2 + (bytes[at + 2] << 8 | bytes[at + 3]);
        if (bytes[at + 1] !== 0xE1) kept.push(bytes.subarray(at, end));
        at = end;
      }
      kept.push(bytes.subarray(at));
      return decode(new Blob(kept), options);
    };"""


def test_a_page_that_ignores_exif_fails_the_comparison(page, served, photos):
    # The same page with photos left as stored, on their side: the comparison catches it.
    _, _, names, expected = photos
    wrong = browser.Page()
    try:
        wrong.before_scripts(WITHOUT_EXIF)
        results = page_results(wrong, served, names, prefix="exif_")
    finally:
        wrong.close()
    turned = gaps(results, expected)
    assert len(turned) == 5 and max(turned.values()) > TOLERANCE, turned


def test_the_page_gives_a_populations_probability_and_the_flag_as_the_graph_does(page, served, photos):
    # The graph (tested against --predict --prevalence in test_export.py) fed 0.02 and run by ONNX Runtime in
    # Python; the page given prevalence=0.02 in its address, and an image unlike any the model learnt from.
    onnx_file, folder, names, _ = photos
    session = onnxruntime.InferenceSession(onnx_file)
    name = names[0]
    feed = {"pixels": np.asarray(load_image(folder / name)), "prevalence": np.array([0.02], np.float32),
            "age": np.array([np.nan], np.float32), "sex": np.array([-1]), "site": np.array([-1])}
    probability = session.run(None, feed)[0][0]
    result = page.score(served, f"images/{name}", prevalence="0.02")
    assert abs(float(result["probability"]) - probability) < TOLERANCE, result
    props = session.get_modelmeta().custom_metadata_map
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    moved = 1 / (1 + math.exp(-(logit(float(props["threshold"])) + logit(0.02) - logit(float(props["prevalence"])))))
    assert result["decision"] == ("malignant" if float(result["probability"]) >= moved else "benign")
    green = page.score(served, "images/green.png")
    assert green["status"] == "done" and "unlike any the model learnt from" in green["warning"], green
    assert "warning" not in page.score(served, f"images/{name}") or "unlike" not in result.get("warning", "")


def test_bad_files_give_a_message_and_no_number(page, served):
    for name, message in [("empty.jpg", "is empty (0 bytes)"), ("notes.jpg", "is not an image this browser can decode"),
                          ("missing.jpg", "not found (HTTP 404)")]:
        result = page.score(served, f"images/{name}")
        assert result["status"].startswith("error: ") and message in result["status"], result
        assert "probability" not in result and "decision" not in result
    result = page.score(served, "images/oblong_0.jpg", model="nothing.onnx")
    assert "model nothing.onnx not found" in result["status"] and "--export web/model.onnx" in result["status"]
    result = page.score(served, "http://example.org/lesion.jpg")
    assert "not on this page's server" in result["status"]


def test_no_request_leaves_the_pages_origin(page, served, photos):
    page.score(served, f"images/{photos[2][0]}")
    assert len(page.requests) > 3  # the page, its script, the runtime, the model, the image...
    assert any(url.endswith(".wasm") for url in page.requests) and any("model.onnx" in url for url in page.requests)
    assert page.foreign_requests(served) == []
    page.requests.append("https://cdn.example.org/ort.wasm")  # and a request elsewhere would be caught
    assert page.foreign_requests(served) == ["https://cdn.example.org/ort.wasm"]
