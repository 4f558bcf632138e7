"""Where a model runs, and how fast: the device, the precision, the processes that load images.

train.py and evaluate.py choose all three here (--device, --precision, --workers); a first reading
can take the defaults on trust: the CPU, or a GPU when there is one; train.py in bfloat16 on a GPU
that has it and float32 elsewhere, evaluate.py in float32 unless --precision bf16 asks. With
torchrun, train.py trains one model in several processes (helpers/distributed.py). docs/SPEED.md has
what each choice measured.

Examples:
  python train.py --model resnet --pretrained --img-size 224 --device cuda \
      --out checkpoints/resnet224.pt
  torchrun --nproc_per_node=4 train.py --model resnet --pretrained \
      --out checkpoints/resnet-ddp.pt                      # 4 GPUs
"""
import os
import sys
from dataclasses import dataclass

import torch

from helpers import distributed
from helpers.files import number


def pick_device(name="auto"):
    """'auto' takes a CUDA GPU, else an Apple GPU (mps), else the CPU."""
    if name == "auto":
        name = ("cuda" if torch.cuda.is_available()
                else "mps" if torch.backends.mps.is_available() else "cpu")
    return torch.device(name)


# --- Precision ------------------------------------------------------------------------------------
# float32 is the safe default. In bfloat16 (8 bits of mantissa instead of 23, float32's range) or
# float16 a GPU's tensor cores multiply several times faster and activations take half the memory;
# autocast runs matrix products and convolutions in 16 bits and keeps sums, softmax and the loss in
# float32, where rounding would hurt. float16's narrow range can flush small gradients to zero, so
# its loss is scaled up before backward and the gradients scaled back down (GradScaler); bfloat16
# needs no scaling.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_precision(requested, device):
    """'auto' is bf16 on a GPU that has it, else fp32; a CPU without bfloat16 instructions gets
    a warning."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    emulated = not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if requested == "bf16" and device.type == "cpu" and emulated:
        print("warning: this CPU has no bfloat16 instructions, so bf16 is emulated, far slower",
              file=sys.stderr)
    return requested


def autocast(precision, device):
    """The context in which the model runs at this precision (for fp32: one that
    changes nothing)."""
    return torch.autocast(device.type, PRECISIONS[precision], enabled=precision != "fp32")


# --- Loading images in parallel -------------------------------------------------------------------

def worker_count(requested, device):
    """Worker processes to load images in: as requested, or by default for the device. Feeding a GPU
    is the CPU's only job, so all but one core load (at most 8). On a CPU the cores are what trains
    the model, and loading a 256 px copy takes a few ms against tens of ms of training per image:
    one worker per four cores keeps up (on a 2-core CPU, none: one worker measured no clear gain
    over loading in the training process, see docs/SPEED.md)."""
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    return min(8, cores - 1) if device.type == "cuda" else cores // 4


def add_options(parser, precision):
    """--device, --precision (as `precision` says) and --workers."""
    parser = parser.add_argument_group("the hardware (chapters/hardware.py)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--precision", **precision)
    parser.add_argument("--workers", type=number(int, 0), default=None,
                        help="processes that load images (default: chapters/hardware.py, "
                             "worker_count)")


# --- All of it, as train.py carries it ------------------------------------------------------------

@dataclass
class Hardware:
    """Where and how training runs: the device and precision, and with torchrun which of how many
    processes this is (helpers/distributed.py: each trains on its share of the images, rank 0 writes
    the files)."""
    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1
    workers: int = 0

    @staticmethod
    def add_training_options(parser):
        add_options(parser, precision=dict(
            choices=("auto", *PRECISIONS), default="auto",
            help="auto: bf16 on a GPU that supports it, else fp32; fp16 on CUDA only"))

    @staticmethod
    def add_evaluation_options(parser):
        # Scored in float32 unless asked: then probabilities do not depend on the machine.
        add_options(parser, precision=dict(
            choices=("fp32", "bf16"), default="fp32",
            help="bf16: score in bfloat16 autocast, about twice as fast on a CPU with "
                 "AVX512-BF16 or AMX, probabilities a little different (docs/SPEED.md)"))

    @classmethod
    def choose(cls, device="auto", precision="auto", workers=None):
        """From the command line's --device, --precision and --workers (ValueError for an
        impossible one)."""
        rank, world_size, device = distributed.start(pick_device(device))
        return cls(device, choose_precision(precision, device), rank, world_size,
                   worker_count(workers, device))

    def autocast(self):
        return autocast(self.precision, self.device)

    def __str__(self):
        processes = f" x {self.world_size} processes" if self.world_size > 1 else ""
        return f"{self.device}{processes}, {self.precision}"
