"""Speed: loading, training and evaluation images/s, against a plain reference loop on the same images.

For each model and image size it measures, in this process and on the same images:
  load   decode + augment only (no model): ours reads prepare_data.py's resized copies with worker
         processes; the reference decodes the original file every time, in the training process;
  train  the whole training step, loading included: ours is train.py's own train_one_epoch (channels_last,
         workers, --precision: auto unless given); the reference is the loop of the PyTorch transfer-learning tutorial
         (float32, default memory layout, DataLoader defaults), once on the same resized copies
         ("train") and once on the originals ("epoch": what a reference epoch really costs).
         Both apply the same augmentations (dataset.py's), so the ratios measure the engineering alone;
  eval   scoring without gradients: model.py's predict(), which train.py and evaluate.py use, against a
         torch.no_grad() loop;
  memory the process's peak resident memory while training (worker processes not included), or the
         GPU's peak allocation on CUDA.
Before that, what the parts cost apart: bfloat16 and float32 matrix products, a 6000x4000 JPEG decoded
in full and at reduced scale, one image's augmentation, each model's training step without loading in
both memory layouts. Then ratios ours / reference, which hold on a noisy machine because both sides
share it; the rate of 2048x2048 float32 matrix products, to say how close training gets to what the
machine can do; and the wall time of the README's offline quick start (prepare, train, evaluate).

--predict CHECKPOINT times what evaluate.py --predict costs instead, model included, on the test split of
--data (the HAM10000 test pool of benchmarks/quality.py by default): images/s with and without test-time
augmentation, for PyTorch in float32, PyTorch under bfloat16 autocast (only where the CPU has bfloat16
instructions: emulated, it is tens of times slower) and ONNX Runtime running evaluate.py --export's graph,
and the AUC each gives, to see which is fastest without moving the AUC. --images N scores only N of them.

--large WxH re-saves the images as WxH JPEGs first, as real ISIC Archive originals are (up to 6000x4000),
to show what decoding costs. --big-table instead times prepare_data.py on ISIC 2024 as Kaggle ships it,
generated at its size: train-metadata.csv (401,059 rows, 393 malignant, the competition's 55 columns)
and train-image.hdf5 (one small JPEG per row); --big-table 20000 makes it smaller.

Usage (a 2-core CPU: about 10 minutes; --large 3000x2000 about 15):
  python benchmarks/speed.py                              # the synthetic set
  python benchmarks/speed.py --large 3000x2000            # the same lesions as large JPEGs
  python benchmarks/speed.py --data ../shared/data/ham10000 --images 320
  python benchmarks/speed.py --big-table
  python benchmarks/speed.py --big-table 20000
  python benchmarks/speed.py --predict benchmarks/out/quality/budget-0/model-70a272b438.pt   # after quality.py
"""
import argparse
import copy
import io
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from chapters.hardware import Hardware, autocast, choose_precision, pick_device, worker_count  # noqa: E402
from chapters.metadata import fused_probabilities  # noqa: E402
from train import roc_auc  # noqa: E402
from chapters.onnx_export import OPSET, import_onnx  # noqa: E402
from dataset import (CustomDataset, EpochSampler, build_loaders, build_transforms, loader_options,  # noqa: E402
                     read_labels, read_split)
from evaluate import Models  # noqa: E402
from helpers.images import load_image  # noqa: E402
from helpers.synthetic import draw_lesion, isic_2024_metadata  # noqa: E402
from model import build_model, dihedral_views, load_checkpoint, normalisation, predict  # noqa: E402
from train import Run, train_one_epoch  # noqa: E402


# --- The reference: the transfer-learning tutorial's way -----------------------------------------------

class ReferenceDataset(Dataset):
    """As torchvision's ImageFolder does it: open and decode the file, full size, every time."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return self.transform(Image.open(self.paths[index]).convert("RGB")), self.labels[index]


def reference_train(model, loader, device):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()


def reference_eval(model, loader, device):
    model.eval()
    with torch.no_grad():
        for inputs, _ in loader:
            model(inputs.to(device)).softmax(dim=1)


def reference_load(loader):
    for _ in loader:
        pass


# --- Measuring -----------------------------------------------------------------------------------------

def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")  # Linux: restart the peak (VmHWM) from the current size


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        return int(next(line for line in status.read_text().splitlines() if line.startswith("VmHWM")).split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


ROUNDS = 2  # each figure is the best of this many runs: a busy machine only ever slows a run down


def timed(work, images, device, rounds=ROUNDS):
    """images/s of work() (the best of `rounds` runs), and the peak memory meanwhile."""
    best = 0
    reset_peak_memory(device)
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, images / (time.perf_counter() - started))
    return best, peak_memory_mb(device)


def matmul_gflops(device, dtype=torch.float32, n=2048, repeats=10):
    a = torch.randn(n, n, dtype=dtype, device=device)
    a @ a
    rate, _ = timed(lambda: [a @ a for _ in range(repeats)], repeats, device, rounds=3)
    return rate * 2 * n**3 / 1e9


def training_gflop_per_image(name, size):
    """Forward FLOPs of one image, times 3: the backward pass costs about twice the forward."""
    counter = FlopCounterMode(display=False)
    with counter:
        build_model(name)(torch.zeros(1, 3, size, size))
    return 3 * counter.get_total_flops() / 1e9


def step_rate(name, size, layout, batch_size, device):
    """Training images/s of the model alone (random tensors, no loading), its weights in this layout."""
    torch.manual_seed(0)
    model = build_model(name).to(device, memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randn(batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 2, (batch_size,), device=device)

    def step():
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    return timed(step, batch_size, device, rounds=3)[0]


def machine_figures(data, models, sizes, batch_size, work, device):
    """What the parts cost on this machine, apart: bfloat16 against float32 matrix products; a
    6000x4000 JPEG decoded in full and at reduced scale; one image's training augmentation; and each
    model's training step alone in the NCHW and channels_last layouts."""
    print(f"512x512 matrix products: {matmul_gflops(device, n=512):.0f} GFLOP/s in float32, "
          f"{matmul_gflops(device, torch.bfloat16, n=512, repeats=2):.1f} in bfloat16")

    def milliseconds(work):
        return 1000 / timed(work, 1, device, rounds=3)[0]

    photo = Image.open(read_labels(data)["load_path"][0]).convert("RGB").resize((6000, 4000), Image.BICUBIC)
    photo.save(work / "large.jpg", quality=90)
    print(f"a 6000x4000 JPEG decodes in {milliseconds(lambda: load_image(work / 'large.jpg')):.0f} ms in full, "
          f"{milliseconds(lambda: load_image(work / 'large.jpg', 256)):.0f} ms at reduced scale")
    copy, small = photo.resize((384, 256), Image.BICUBIC), torch.rand(3, 128, 128)
    augment = build_transforms(128, True, *normalisation("baseline"))
    jitter = next(step for step in augment.transforms if isinstance(step, v2.ColorJitter))
    print(f"training augmentation of a 384x256 image to 128 px: {milliseconds(lambda: augment(copy)):.1f} ms, "
          f"of which colour jitter {milliseconds(lambda: jitter(small)):.1f} ms")
    for name in models:
        for size in sizes:
            nchw, last = (step_rate(name, size, layout, batch_size, device)
                          for layout in (torch.contiguous_format, torch.channels_last))
            print(f"{name} at {size} px, training step alone: {nchw:.1f} images/s NCHW, {last:.1f} channels_last "
                  f"({last / nchw:.2f}x)")


def measure_ours(name, train_set, eval_set, make_loader, images, device, precision):
    """Training as train.py runs it, and model.py's predict(), which train.py and evaluate.py use."""
    torch.manual_seed(0)
    model = build_model(name).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loader, eval_loader = make_loader(train_set), make_loader(eval_set)
    # train.py's Run for one process: the whole model learns, unwrapped; nothing is validated here.
    training = Run(model, model, model, loader, eval_loader, [], nn.CrossEntropyLoss(), optimizer, scheduler,
                   scaler)
    hardware = Hardware(device, precision)

    def train():
        train_one_epoch(training, hardware)

    train()  # warm-up: workers start, kernels are chosen
    speed, memory = timed(train, images, device)
    predict(model, eval_loader, device)
    return {"train ours": speed, "memory ours MB": memory,
            "eval ours": timed(lambda: predict(model, eval_loader, device), images, device)[0]}


def measure_reference(name, cached_set, original_set, eval_set, make_loader, batch_size, images, device):
    """The reference: same architecture and initial weights, default (NCHW) layout, float32."""
    torch.manual_seed(0)
    model = build_model(name).to(device, memory_format=torch.contiguous_format)
    reference_train(model, make_loader(Subset(cached_set, range(batch_size))), device)  # warm-up
    speed, memory = timed(lambda: reference_train(model, make_loader(cached_set), device), images, device)
    return {"train ref": speed, "memory ref MB": memory,
            "epoch ref": timed(lambda: reference_train(model, make_loader(original_set), device), images, device)[0],
            "eval ref": timed(lambda: reference_eval(model, make_loader(eval_set), device), images, device)[0]}


def epoch_split(name, size, data, batch_size, workers, device, precision):
    """Where one epoch of train.py's goes: waiting for the next batch (loading and augmentation), the forward
    pass and loss, the backward pass, the optimizer step; then validation, with and without TTA. Seconds
    per image of each part, from a second epoch (the first starts workers and chooses kernels)."""
    torch.manual_seed(0)
    mean, std = normalisation(name)
    train_set = CustomDataset(read_split(data, "train"), build_transforms(size, True, mean, std))
    val_set = CustomDataset(read_split(data, "val"), build_transforms(size, False, mean, std))
    sampler = EpochSampler(train_set.labels, seed=0)  # every image once, shuffled, as train.py's default
    train_loader, val_loader = build_loaders(train_set, val_set, sampler, batch_size, workers)
    model = build_model(name).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for epoch in (1, 2):
        parts, seen = dict.fromkeys(("loading", "forward", "backward", "optimizer"), 0.0), 0
        model.train()
        train_loader.sampler.set_epoch(epoch)
        clock = time.perf_counter()

        def lap(part):
            nonlocal clock
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            parts[part] += now - clock
            clock = now

        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            lap("loading")
            with autocast(precision, device):
                loss = nn.functional.cross_entropy(model(images), labels)
            lap("forward")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lap("backward")
            optimizer.step()
            lap("optimizer")
            seen += len(labels)
    predict(model, val_loader, device)  # warm-up: the validation loader's workers start
    for tta in (False, True):
        started = time.perf_counter()
        predict(model, val_loader, device, tta)
        parts[f"validation{' with TTA' if tta else ''}"] = time.perf_counter() - started
    per_image = {part: 1000 * seconds / (seen if part in ("loading", "forward", "backward", "optimizer")
                                         else len(val_loader.dataset)) for part, seconds in parts.items()}
    train_ms = sum(per_image[part] for part in ("loading", "forward", "backward", "optimizer"))
    print(f"{name} at {size} px, ms per image: " + ", ".join(f"{part} {ms:.1f}" for part, ms in per_image.items())
          + f"; training {train_ms:.1f} ms = " + ", ".join(
              f"{part} {per_image[part] / train_ms:.0%}" for part in ("loading", "forward", "backward", "optimizer")))
    return per_image


def batch_size_figures(name, size, device, compile_too=False):
    """ms per image of inference and of a training step, on random tensors, by how many images go through the
    model at once; with compile_too, also torch.compile's: its first step (the compilation) and after."""
    torch.manual_seed(0)
    model = build_model(name).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.randn(64, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (64,), device=device)

    def train_step(network, batch):
        for start in range(0, 64, batch):
            loss = nn.functional.cross_entropy(network(images[start:start + batch]), labels[start:start + batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    @torch.inference_mode()
    def infer(network, batch, tta=False):
        network.eval()
        for view in dihedral_views(images) if tta else [images]:  # flipped and turned views, as TTA scores them
            for start in range(0, 64, batch):
                network(view[start:start + batch])
        network.train()

    for what, work, count in (("inference", infer, 64), ("inference of the 8 TTA views", partial(infer, tta=True), 512),
                              ("training step", train_step, 64)):
        rates = {batch: timed(lambda: work(model, batch), count, device, rounds=3)[0] for batch in (8, 16, 32, 64)}
        print(f"{name} at {size} px, {what}, ms per image by batch size: "
              + ", ".join(f"{batch}: {1000 / rate:.1f}" for batch, rate in rates.items()))
    if compile_too:
        compiled = torch.compile(model)
        started = time.perf_counter()
        train_step(compiled, 32)
        first = time.perf_counter() - started
        rate, _ = timed(lambda: train_step(compiled, 32), 64, device, rounds=3)
        print(f"{name} at {size} px, torch.compile: first steps (compiling) {first:.0f} s, then a training step "
              f"{1000 / rate:.1f} ms per image at batch 32")


def measure(name, size, data, count, batch_size, workers, device, precision):
    mean, std = normalisation(name)
    table = read_labels(data)
    table = table[table["split"] == "train"].head(count)
    ours_set = Subset(CustomDataset(read_split(data, "train"), build_transforms(size, True, mean, std)),
                      range(len(table)))
    ours_eval_set = Subset(CustomDataset(read_split(data, "train"), build_transforms(size, False, mean, std)),
                           range(len(table)))
    labels = table["label"].tolist()
    augment, plain = build_transforms(size, True, mean, std), build_transforms(size, False, mean, std)
    cached_ref = ReferenceDataset(table["load_path"].tolist(), labels, augment)
    original_ref = ReferenceDataset(table["image_path"].tolist(), labels, augment)
    eval_ref = ReferenceDataset(table["load_path"].tolist(), labels, plain)

    def ours_loader(dataset):
        return DataLoader(dataset, batch_size, shuffle=True, drop_last=True, **loader_options(workers))

    def reference_loader(dataset):
        return DataLoader(dataset, batch_size, shuffle=True, drop_last=True)

    images = len(table) // batch_size * batch_size
    row = {"model": name, "size": size, "precision": precision, "images": images}
    # Loading alone.
    load_loader = ours_loader(ours_set)
    reference_load(load_loader)  # starts the persistent workers, if any
    row["load ours"], _ = timed(lambda: reference_load(load_loader), images, device)
    row["load ref"], _ = timed(lambda: reference_load(reference_loader(original_ref)), images, device)

    row.update(measure_ours(name, ours_set, ours_eval_set, ours_loader, images, device, precision))
    row.update(measure_reference(name, cached_ref, original_ref, eval_ref, reference_loader, batch_size, images,
                                 device))
    for what in ("load", "train", "eval"):
        row[f"{what} ratio"] = row[f"{what} ours"] / row[f"{what} ref"]
    row["epoch ratio"] = row["train ours"] / row["epoch ref"]
    row["GFLOP/s"] = row["train ours"] * training_gflop_per_image(name, size)
    return row


# --- Preparing the images ----------------------------------------------------------------------------

def run(*command, cwd=ROOT):
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *map(str, command)], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stdout


def make_large_copies(data, out, width, height):
    """The prepared images, upscaled to width x height and saved as JPEGs in benign/ and malignant/."""
    table = read_labels(data)
    for row in table.itertuples():
        folder = out / ("malignant" if row.label else "benign")
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.open(row.load_path).convert("RGB").resize((width, height), Image.BICUBIC)
        image.save(folder / f"{row.isic_id}.jpg", quality=90)


def quick_start_seconds(work):
    """The README's offline quick start, each step a process of its own, in a scratch folder."""
    work.mkdir(parents=True, exist_ok=True)
    steps = {}
    for step, command in (("prepare", ["prepare_data.py", "--source", "synthetic"]), ("train", ["train.py"]),
                          ("evaluate", ["evaluate.py", "checkpoints/baseline.pt"])):
        steps[step], _ = run(ROOT / command[0], *command[1:], cwd=work)
    return steps


def big_table(work, rows=401_059):
    """ISIC 2024 as Kaggle ships it, at its size or `rows` rows, generated: train-metadata.csv with the
    competition's 55 columns and train-image.hdf5 holding one small JPEG per row (393 malignant and 1,042
    patients at full size, as many per row when smaller); prepare_data.py timed on it in a process of its
    own, and that process's peak memory."""
    root = work / "isic2024"
    root.mkdir(parents=True)
    started = time.perf_counter()
    rng = random.Random(0)
    lesions = []  # a few drawn lesions, each made distinct per row by a comment segment (FF FE) naming it
    for index in range(8):
        buffer = io.BytesIO()
        draw_lesion(rng, index % 2, 48).save(buffer, format="JPEG", quality=90)
        lesions.append(buffer.getvalue())
    ids = [f"ISIC_{index:07d}" for index in range(rows)]
    with h5py.File(root / "train-image.hdf5", "w") as file:
        for index, image_id in enumerate(ids):
            jpeg, comment = lesions[index % len(lesions)], f"row {index}".encode()
            file[image_id] = np.bytes_(jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
                                       + jpeg[2:])
    positives, patients = max(10, round(393 * rows / 401_059)), max(30, round(1_042 * rows / 401_059))
    targets = [0] * rows
    for index in rng.sample(range(rows), positives):
        targets[index] = 1
    isic_2024_metadata(ids, targets, [f"IP_{rng.randrange(patients):07d}" for _ in ids]).to_csv(
        root / "train-metadata.csv", index=False)
    megabytes = sum(path.stat().st_size for path in root.iterdir()) / 2**20
    print(f"generated {rows:,} rows ({positives} malignant, {patients} patients) and their images, "
          f"{megabytes:.0f} MB, in {time.perf_counter() - started:.0f} s")
    seconds, output = run("prepare_data.py", "--source", root, "--out", work / "prepared")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)
    print(output.rstrip())
    print(f"prepare_data.py on {rows:,} rows: {seconds:.0f} s, peak memory {peak:.0f} MB")


# --- Prediction: what --predict costs, and which way of running the model is fastest ------------------------

CROPS = 500_000  # about as many as ISIC 2024's hidden test set


class RuntimeModel:
    """The classifier exported as --export exports its network (without the preprocessing, which the batches have
    had) and run by ONNX Runtime, called as the PyTorch classifier it stands for, so that model.predict runs it as
    it runs PyTorch's: a batch of normalised images in, two logits per image out. `example`: a batch to trace."""

    def __init__(self, model, example):
        _, onnxruntime = import_onnx()
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
            path = os.path.join(folder, "model.onnx")
            torch.onnx.export(model.eval(), (example,), path, dynamo=False, opset_version=OPSET,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "images"}, "logits": {0: "images"}})
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def eval(self):
        return self

    def __call__(self, images):
        return torch.from_numpy(self.session.run(None, {"image": images.contiguous().numpy()})[0])


def predictors(model, info, loader):
    """{name: predict(tta)} for each way of running the checkpoint's model on this CPU."""
    cpu = torch.device("cpu")
    found = {"PyTorch float32": lambda tta: predict(model, loader, cpu, tta)}
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        def bfloat16(tta):
            with autocast("bf16", cpu):
                return predict(model, loader, cpu, tta)
        found["PyTorch bfloat16 autocast"] = bfloat16
    else:
        with torch.inference_mode(), autocast("bf16", cpu):
            sample = torch.randn(16, 3, info["img_size"], info["img_size"])
            rate, _ = timed(lambda: model(sample), 16, cpu, rounds=1)
        print(f"PyTorch bfloat16 autocast: left out, this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): "
              f"emulated, the model alone runs {rate:.1f} images/s")
    example = torch.randn(5, 3, info["img_size"], info["img_size"], generator=torch.Generator().manual_seed(0))
    runtime = RuntimeModel(model, example)
    found["ONNX Runtime float32"] = lambda tta: predict(runtime, loader, cpu, tta)
    # The memory layout, and TorchScript frozen for inference (batch norm folded into the convolutions).
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    found["PyTorch float32 channels_last"] = lambda tta: predict(channels_last, loader, cpu, tta)
    with torch.inference_mode(False):
        traced = torch.jit.trace(copy.deepcopy(model).eval(), example, check_trace=False)
    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    found["TorchScript float32 frozen"] = lambda tta: predict(frozen, loader, cpu, tta)
    return found


def prediction_figures(checkpoint, data, images):
    """The table of --predict's speed and AUC by predictor and views, on the test split of data."""
    table = read_split(data, "test")
    table = table.sample(n=images, random_state=0) if images else table  # a random few: both classes
    model, info = load_checkpoint(checkpoint)
    transform = Models([(model, info)], torch.device("cpu")).transform()  # evaluate.py's, for this checkpoint
    loader = DataLoader(CustomDataset(table, transform), 64,
                        **loader_options(worker_count(None, torch.device("cpu"))))
    found = predictors(model, info, loader)
    rows = []
    for views in (1, 8):
        for name, run_predictor in found.items():
            started = time.perf_counter()
            probabilities, labels = run_predictor(views == 8)
            rate = len(table) / (time.perf_counter() - started)
            if info.get("fusion"):
                probabilities = fused_probabilities(info["fusion"], probabilities, table)
            rows.append({"predictor": name, "views": views, "images/s": rate,
                         f"hours for {CROPS:,} crops": CROPS / rate / 3600, "AUC": roc_auc(labels, probabilities)})
            print(pd.DataFrame(rows[-1:]).round(4).to_string(index=False, header=len(rows) == 1), flush=True)
    results = pd.DataFrame(rows)
    print(f"\n{info['model']} ({info.get('folds', 1)} models), {info['img_size']} px, on {len(table)} images of {data}; "
          "images/s include reading and resizing each image:\n")
    print(markdown(results.assign(AUC=results["AUC"].map("{:.4f}".format))))
    for views, rows_of_views in results.groupby("views"):
        reference = rows_of_views["AUC"].iloc[0]
        close = rows_of_views[(rows_of_views["AUC"] - reference).abs() < 0.002]
        best = close.loc[close["images/s"].idxmax()]
        print(f"{views} view(s): fastest within 0.002 AUC of PyTorch float32: {best['predictor']} "
              f"({best['images/s'] / rows_of_views['images/s'].iloc[0]:.2f} times its speed)")


def markdown(table):
    """The table as Markdown, for the README: numbers with at most one decimal."""
    cells = [[f"{value:.1f}" if isinstance(value, float) else str(value) for value in row] for row in table.values]
    lines = [list(table.columns), ["---"] * len(table.columns), *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None,
                        help="a prepared folder (with labels.csv) or a source for prepare_data.py (default: the "
                             "synthetic set)")
    parser.add_argument("--images", type=int, default=None,
                        help="training images per measurement (default 160); with --predict, images scored (default: all)")
    parser.add_argument("--large", default=None, metavar="WxH", help="re-save the images as JPEGs of this size first")
    parser.add_argument("--models", nargs="+", default=["baseline", "resnet18"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: as train.py)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="ours: train.py's --precision (the reference: fp32)")
    parser.add_argument("--no-quick-start", action="store_true", help="skip timing the README's quick start")
    parser.add_argument("--split", action="store_true",
                        help="only print where a training epoch and validation go, part by part, for each model, "
                             "and what inference and a training step cost by batch size")
    parser.add_argument("--compile", action="store_true", help="with --split: time torch.compile's training step")
    parser.add_argument("--big-table", type=int, nargs="?", const=401_059, default=None, metavar="ROWS",
                        help="only time prepare_data.py on ISIC 2024 as Kaggle ships it, generated: 401,059 rows "
                             "(or ROWS) and their images in one HDF5 file")
    parser.add_argument("--predict", default=None, metavar="CHECKPOINT",
                        help="only time evaluate.py --predict's ways of running this checkpoint, on --data's test "
                             "split (default: benchmarks/out/quality/ham-test)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, deleted after)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="speed-"))
    work.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    args.workers = worker_count(args.workers, device)
    precision = choose_precision(args.precision, device)
    gpu = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    print(f"{torch.__version__} on {device} ({gpu}"
          f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads); {args.workers} loader workers; "
          f"ours in {precision}")
    try:
        if args.big_table:
            big_table(work, args.big_table)
            return
        if args.predict:
            data = args.data or ROOT / "benchmarks" / "out" / "quality" / "ham-test"
            prediction_figures(args.predict, data, args.images)
            return
        args.images = args.images or 160
        data = Path(args.data) if args.data else None
        if data is None or not (data / "labels.csv").exists():
            source = data or "synthetic"
            count = max(200, 2 * args.images)  # the train split (70 %) holds --images of them
            run("prepare_data.py", "--source", source, "--out", work / "prepared", "--synthetic-count", count)
            data = work / "prepared"
        if args.large:
            width, height = map(int, args.large.lower().split("x"))
            started = time.perf_counter()
            make_large_copies(data, work / "large", width, height)
            print(f"saved {len(read_labels(data))} images as {width}x{height} JPEGs "
                  f"in {time.perf_counter() - started:.0f} s")
            seconds, output = run("prepare_data.py", "--source", work / "large", "--out", work / "prepared-large")
            data = work / "prepared-large"
            print(f"prepare_data.py on them, resized copies included: {seconds:.0f} s; "
                  + next(line for line in output.splitlines() if line.startswith("resized copies")))

        if args.split:
            for name in args.models:
                for size in args.sizes:
                    epoch_split(name, size, data, args.batch_size, args.workers, device, precision)
                    batch_size_figures(name, size, device, args.compile)
            return
        machine_figures(data, args.models, args.sizes, args.batch_size, work, device)
        float32 = matmul_gflops(device)
        print(f"2048x2048 matrix products: {float32:.0f} GFLOP/s in float32")
        rows = []
        for name in args.models:
            for size in args.sizes:
                rows.append(measure(name, size, data, args.images, args.batch_size, args.workers, device,
                                    precision))
                print(pd.DataFrame(rows[-1:]).round(2).to_string(index=False), flush=True)
        table = pd.DataFrame(rows)
        print("\nimages/s (memory in MB), ours against the reference loop (ref), and ours / ref:")
        print(markdown(table))
        print(f"training at {table['GFLOP/s'].max():.0f} GFLOP/s at best, against {float32:.0f} GFLOP/s of "
              "float32 matrix products")
        if not args.no_quick_start:
            steps = quick_start_seconds(work / "quick-start")
            print("README quick start: " + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in steps.items())
                  + f"; {sum(steps.values()) / 60:.1f} minutes in all")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
