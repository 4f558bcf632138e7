"""Where a training run's wall time goes: train.py run as given, each of its parts timed.

  python benchmarks/recipe_time.py --out benchmarks/out/recipe_time.json -- \
      --data data/ham --model efficientnet_lite0 --pretrained --folds 5 --patience 0

Everything after `--` goes to train.py unchanged; the run is train.py's own, in this process, with a
clock around each part (time inside a part that another timed part calls counts for the inner one):
the training steps (train_one_epoch), the per-epoch validation, building the models (and loading the
ImageNet weights), checkpoint writes and reads, the pictures, the metadata's fusion; "the rest" is
what is left of the wall time (loaders, the log, starting up). Prints a table and writes it as JSON.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from chapters import metadata  # noqa: E402

PARTS = [  # (module, function, the part it is)
    (train, "train_one_epoch", "training steps (train_one_epoch)"),
    (train, "validate", "per-epoch validation (validate)"),
    (train, "build_model", "building the models, ImageNet weights"),
    (train, "save_checkpoint", "checkpoint writes"),
    (train, "read_checkpoint", "checkpoint reads"),
    (train, "draw_curves", "pictures: curves"),
    (train, "draw_augmentation_grid", "pictures: augmentations"),
    (metadata, "add_late_fusion", "the metadata's fusion and its picture"),
]


def timed(function, part, spent, stack):
    """function, its time (less that of the timed parts it calls) added to spent[part]."""
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        stack.append(0.0)
        try:
            return function(*args, **kwargs)
        finally:
            inner = stack.pop()
            elapsed = time.perf_counter() - started
            spent[part] = spent.get(part, 0.0) + elapsed - inner
            stack[-1] += elapsed
    return wrapper


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/out/recipe_time.json", help="where to write the table")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then train.py's arguments")
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    spent, stack = {}, [0.0]
    for module, name, part in PARTS:
        setattr(module, name, timed(getattr(module, name), part, spent, stack))
    sys.argv = ["train.py", *train_args]
    started = time.perf_counter()
    train.main()
    wall = time.perf_counter() - started
    rows = {part: spent.get(part, 0.0) for _, _, part in PARTS}
    rows["the rest"] = wall - sum(rows.values())
    print(f"\n{'part':45s}{'seconds':>10s}{'share':>8s}")
    for part, seconds in rows.items():
        print(f"{part:45s}{seconds:10.1f}{seconds / wall:8.1%}")
    print(f"{'wall time':45s}{wall:10.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"train_args": train_args, "wall_seconds": wall, "seconds": rows}, indent=2))


if __name__ == "__main__":
    main()
