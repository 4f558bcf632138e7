// The page's script: the exported model (evaluate.py CHECKPOINT --export web/model.onnx) run by
// ONNX Runtime's WebAssembly build on an image decoded in the browser. Nothing leaves the page:
// the model, the runtime and any image named in the address come from the page's own server.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = 1;  // threads need a cross-origin-isolated server; one is enough here

const result = document.getElementById("result");
const form = document.getElementById("form");
let model = null;       // {session, props}
let lastImage = null;   // {name, blob}: what the metadata fields re-score

// --- The model and its props --------------------------------------------------------------------

// A model file's metadata_props (ModelProto field 14: pairs of key 1 and value 2), read from its
// protocol-buffer bytes: onnxruntime-web does not expose them.
function readProps(bytes) {
  let at = 0;
  const varint = () => {
    let value = 0, shift = 1;
    for (;;) {
      const byte = bytes[at++];
      value += (byte & 127) * shift;
      if (byte < 128) return value;
      shift *= 128;
    }
  };
  const fields = (end, visit) => {
    while (at < end) {
      const key = varint(), field = Math.floor(key / 8), type = key % 8;
      if (type === 0) varint();
      else if (type === 1) at += 8;
      else if (type === 5) at += 4;
      else if (type === 2) {
        const length = varint(), stop = at + length;
        visit(field, stop);
        at = stop;
      } else throw new Error("not an ONNX model");
    }
  };
  const text = (stop) => new TextDecoder().decode(bytes.subarray(at, stop));
  const props = {};
  fields(bytes.length, (field, stop) => {
    if (field !== 14) return;
    let key = "", value = "";
    fields(stop, (inner, end) => {
      if (inner === 1) key = text(end);
      if (inner === 2) value = text(end);
    });
    props[key] = value;
  });
  return props;
}

async function fetchSameOrigin(path, what) {
  const url = new URL(path, location.href);
  if (url.origin !== location.origin) {
    throw new Error(`${what} ${path} is not on this page's server; give a path on it`);
  }
  let response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new Error(`${what} ${path} could not be read (${error.message})`);
  }
  if (!response.ok) throw new Error(`${what} ${path} not found (HTTP ${response.status})`);
  return response.blob();
}

async function loadModel(path) {
  let bytes;
  try {
    bytes = new Uint8Array(await (await fetchSameOrigin(path, "model")).arrayBuffer());
  } catch (error) {
    throw new Error(`${error.message}. Export one: python evaluate.py CHECKPOINT --export ` +
                    "web/model.onnx");
  }
  const props = readProps(bytes);
  if (!props.threshold) throw new Error(`${path} is not a model written by evaluate.py --export`);
  const session = await ort.InferenceSession.create(bytes, {executionProviders: ["wasm"]});
  return {session, props, words: JSON.parse(props.words || "{}"),
          spellings: JSON.parse(props.spellings || "{}")};
}

function describeModel() {
  const {props, words} = model;
  document.getElementById("about").textContent = props.model;
  document.getElementById("threshold").textContent = Number(props.threshold).toFixed(3);
  document.getElementById("prevalence").textContent =
    `${(100 * Number(props.prevalence)).toFixed(0)} %`;
  const metadata = document.getElementById("metadata");
  metadata.hidden = !props.words;
  for (const column of ["sex", "site"]) {
    const select = form.elements[column];
    for (const word of words[column] || []) select.add(new Option(word, word));
  }
  const measured = JSON.parse(props.metadata_features || "[]")
    .filter((feature) => !feature.includes(": ") && feature !== "age");
  document.getElementById("measurements").hidden = measured.length === 0;
}

// --- The image, decoded as Python decodes it ------------------------------------------------------

// RGB bytes, height x width x 3, upright as the camera meant it (EXIF orientation applied) and
// with no colour-profile conversion, as helpers/images.py's load_image gives them.
async function decode(name, blob) {
  if (blob.size === 0) throw new Error(`${name} is empty (0 bytes); choose an image file`);
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {imageOrientation: "from-image",
                                            colorSpaceConversion: "none",
                                            premultiplyAlpha: "none"});
  } catch {
    throw new Error(`${name} is not an image this browser can decode; choose a JPEG or PNG file`);
  }
  const {width, height} = bitmap;
  showPreview(bitmap);
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", {willReadFrequently: true});
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, width, height).data;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  return new ort.Tensor("uint8", rgb, [height, width, 3]);
}

// The image as scored, upright, at most 240 pixels wide or high.
function showPreview(bitmap) {
  const preview = document.getElementById("preview");
  const scale = Math.min(1, 240 / Math.max(bitmap.width, bitmap.height));
  preview.width = Math.round(bitmap.width * scale);
  preview.height = Math.round(bitmap.height * scale);
  preview.getContext("2d").drawImage(bitmap, 0, 0, preview.width, preview.height);
  preview.hidden = false;
}

// --- The metadata, cleaned as evaluate.py --image cleans it ------------------------------------------

function metadataInputs(given, warnings) {
  const inputs = {};
  const age = String(given.age ?? "").trim();
  let years = NaN;
  if (age !== "") {
    years = Number(age);
    if (!(years >= 0 && years <= 120)) {
      warnings.push(`age '${age}' is not a value the model knows; scored as unknown`);
      years = NaN;
    }
  }
  inputs.age = new ort.Tensor("float32", new Float32Array([years]), [1]);
  for (const column of ["sex", "site"]) {
    const text = String(given[column] ?? "").trim();
    const word = model.spellings[column]?.[text.toLowerCase()];
    let index = -1;
    if (text !== "" && word === undefined) {
      warnings.push(`${column} '${text}' is not a value the model knows; scored as unknown`);
    } else if (word !== undefined) {
      index = (model.words[column] || []).indexOf(word);
      if (index < 0) {
        warnings.push(`${column} '${word}' never occurred in the training data; scored as unknown`);
      }
    }
    inputs[column] = new ort.Tensor("int64", new BigInt64Array([BigInt(index)]), [1]);
  }
  return inputs;
}

// --- Scoring, and the one place the result is written ------------------------------------------------

function show(status, values = {}) {
  result.dataset.status = status;
  for (const key of ["probability", "decision", "warning"]) {
    if (values[key] === undefined) delete result.dataset[key];
    else result.dataset[key] = values[key];
  }
  const shown = status === "done"
    ? `P(malignant) = ${Number(values.probability).toFixed(3)}: ${values.decision}` +
      ` (threshold ${values.threshold.toFixed(3)})`
    : status;
  document.getElementById("verdict").textContent = shown;
  document.getElementById("warning").textContent = values.warning || "";
}

// --- The population the probability is for ----------------------------------------------------------
// The model's probabilities assume the share of malignant lesions it learnt from (the prevalence
// prop). For another population the graph moves them by Bayes' rule (chapters/calibration.py), and
// the threshold moves the same way, so that every image keeps its call.

function population(given, warnings) {
  const text = String(given.prevalence ?? "").trim();
  const share = Number(text);
  if (text !== "" && !(share > 0 && share < 1)) {
    warnings.push(`prevalence '${text}' is not a share between 0 and 1; the model's own is used`);
  }
  return text !== "" && share > 0 && share < 1 ? share : NaN;
}

const logit = (p) => Math.log(p / (1 - p));

function movedThreshold(share) {
  const threshold = Number(model.props.threshold);
  if (Number.isNaN(share)) return threshold;
  const shift = logit(share) - logit(Number(model.props.prevalence));
  return 1 / (1 + Math.exp(-(logit(threshold) + shift)));
}

async function score(name, blob, given) {
  show("scoring...");
  try {
    const pixels = await decode(name, blob);
    const warnings = [];
    const share = population(given, warnings);
    const feeds = {pixels, prevalence: new ort.Tensor("float32", new Float32Array([share]), [1])};
    if (model.session.inputNames.includes("age")) Object.assign(feeds, metadataInputs(given, warnings));
    const output = await model.session.run(feeds);
    const probability = output.probability.data[0];
    const threshold = movedThreshold(share);
    const decision = probability >= threshold ? "malignant" : "benign";
    if (output.unlike_training?.data[0]) {
      warnings.unshift("this image is unlike any the model learnt from " +
        `(${output.distance_from_training.data[0].toFixed(1)} held-out standard deviations from ` +
        "its training images): not dermoscopy of a lesion like them? Its probability means little");
    }
    document.getElementById("prevalence").textContent = `${(100 * (Number.isNaN(share)
      ? Number(model.props.prevalence) : share)).toFixed(share < 0.1 ? 1 : 0)} %`;
    show("done", {probability: String(probability), decision, threshold,
                  warning: warnings.length ? warnings.join("; ") : undefined});
  } catch (error) {
    show(`error: ${error.message}`);
  }
}

function formMetadata() {
  return {age: form.elements.age.value, sex: form.elements.sex.value,
          site: form.elements.site.value, prevalence: form.elements.prevalence.value};
}

function rescore() {
  if (lastImage) score(lastImage.name, lastImage.blob, formMetadata());
}

async function start() {
  const address = new URLSearchParams(location.search);
  try {
    model = await loadModel(address.get("model") || "model.onnx");
  } catch (error) {
    show(`error: ${error.message}`);
    return;
  }
  describeModel();
  form.elements.image.addEventListener("change", () => {
    const file = form.elements.image.files[0];
    if (file) { lastImage = {name: file.name, blob: file}; rescore(); }
  });
  const drop = document.getElementById("drop");
  drop.addEventListener("dragover", (event) => event.preventDefault());
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) { lastImage = {name: file.name, blob: file}; rescore(); }
  });
  form.addEventListener("change", (event) => { if (event.target.name !== "image") rescore(); });
  form.addEventListener("submit", (event) => { event.preventDefault(); rescore(); });
  show("ready: choose or drop an image");
  const path = address.get("image");
  if (path === null) return;
  // Scored from the address: age, sex and site as given there (a word the model does not
  // know is scored as unknown, and said so).
  const given = {age: address.get("age"), sex: address.get("sex"), site: address.get("site"),
                 prevalence: address.get("prevalence")};
  form.elements.age.value = given.age ?? "";
  form.elements.prevalence.value = given.prevalence ?? "";
  for (const column of ["sex", "site"]) {
    const word = model.spellings[column]?.[String(given[column] ?? "").trim().toLowerCase()];
    if ([...form.elements[column].options].some((option) => option.value === word)) {
      form.elements[column].value = word;
    }
  }
  try {
    lastImage = {name: path, blob: await fetchSameOrigin(path, "image")};
  } catch (error) {
    show(`error: ${error.message}`);
    return;
  }
  await score(path, lastImage.blob, given);
}

start();
