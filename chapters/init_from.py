"""A start that knows skin (train.py --init-from CKPT): ImageNet, then skin, then your clinic.

ImageNet's weights know edges, textures and shapes from photographs of cats and cars; a clinic's few
hundred labels must then teach the model everything about skin. --init-from starts instead from a
model that has already learnt benign from malignant on other dermoscopy (starts/make_skin_start.py
makes one from HAM10000), and the clinic's own images fine-tune every weight of it, head included.
The rest of the recipe is unchanged, and it counts as --pretrained: learning rate 3e-4, and
--freeze-backbone allowed.

A start carries two debts, both recorded. Its licence (HAM10000's is non-commercial) passes to the
model. And the lesions it learnt from can no longer measure the model: a score on them flatters it.
So the checkpoint names the start (file, SHA-256, licence, and the lesion and image ids it learnt
from), and evaluate.py warns when a scored image or lesion is among them.

How train.py uses it:
1. `settle` reads the start once, after the command line: one model (not a fold ensemble) of the
   same architecture. Its weights go into the run's arguments, which every checkpoint saves, so
   that --resume carries on with no start file, even into a fold that had not begun;
2. `load` gives the freshly built network the start's weights;
3. `record`, once training ends, keeps the start's name in the checkpoint and drops its weights.
evaluate.py calls `seen_by_start` on the images it scores.

Example (labelled ISIC Archive images from the skin start, at the learning rate docs/RESULTS.md
chose for it; evaluate.py then warns about any of them that HAM10000 lent the start):
  python train.py --data data/isic-1000 --model efficientnet_lite0 \
      --init-from starts/skin-lite0.pt --lr 1e-4 --folds 5 --patience 0 \
      --out checkpoints/isic-skin.pt
"""
import hashlib
from pathlib import Path

import pandas as pd

from model import read_checkpoint, save_checkpoint


def add_training_options(parser):
    parser = parser.add_argument_group("a start that knows skin (chapters/init_from.py)")
    parser.add_argument("--init-from", metavar="CKPT", default=None,
                        help="start from this one-model checkpoint's weights (same --model) "
                             "instead of ImageNet's, e.g. starts/skin-lite0.pt")


def settle(args, parser):
    """The start, read once into args.start (None without --init-from); --resume finds it there."""
    if "start" in args:  # resumed: the interrupted run holds the start
        return
    args.start = None
    if args.init_from:
        if not Path(args.init_from).exists():
            parser.exit(2, f"error: --init-from: {args.init_from} not found; give a checkpoint of "
                           "train.py, or make the skin start: python starts/make_skin_start.py "
                           "(HAM10000 and about 25 minutes of a 2-core CPU)\n")
        try:
            args.start = read_start(args.init_from, args.model)
        except ValueError as error:
            parser.exit(2, f"error: --init-from: {error}\n")
        args.pretrained = True  # for every default --pretrained sets


def read_start(path, model):
    """The start's weights and what names it: file, SHA-256, licence, the lesions and images it
    learnt from (its own start's too)."""
    start = read_checkpoint(path)
    if start.get("folds", 1) > 1:
        raise ValueError(f"{path} is a {start['folds']}-fold ensemble; start from one model (a "
                         "checkpoint trained without --folds, e.g. starts/skin-lite0.pt)")
    if same_name(start["model"]) != same_name(model):
        raise ValueError(f"{path} is a {start['model']}, not a {model}; add --model "
                         f"{start['model']}")
    earlier = start.get("start") or {}
    seen = seen_ids(start)
    return {"file": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "licence": start.get("licence") or earlier.get("licence"),
            "lesions": sorted(seen["lesions"] | set(earlier.get("lesions", []))),
            "images": sorted(seen["images"] | set(earlier.get("images", []))),
            "weights": start["state_dict"]}


def same_name(model):
    return "resnet18" if model == "resnet" else model


def seen_ids(start):
    """The lesion and image ids a start learnt from: as it records them (starts/make_skin_start.py),
    else the train and val rows of the data folder it was trained on, if that is still there."""
    if "lesions" in start:
        return {"lesions": set(start["lesions"]), "images": set(start["images"])}
    labels = Path(start["args"]["data"]) / "labels.csv"
    if not labels.exists():
        print(f"note: the start's data ({labels}) is gone: which lesions it saw is unknown")
        return {"lesions": set(), "images": set()}
    table = pd.read_csv(labels, dtype=str).query("split in ('train', 'val')")
    return {"lesions": set(table["group"]), "images": set(table["isic_id"])}


def load(network, args):
    """The network, with the start's weights (every one: the two architectures are the same)."""
    if args.start:
        network.load_state_dict(args.start["weights"])
    return network


def record(args):
    """The finished checkpoint names its start and no longer carries the start's weights."""
    if not args.start:
        return
    checkpoint = read_checkpoint(args.out)
    start = {key: value for key, value in args.start.items() if key != "weights"}
    checkpoint["args"] = {**checkpoint["args"], "start": None}
    save_checkpoint(args.out, checkpoint.pop("state_dict"), **checkpoint, start=start)
    print(f"started from {start['file']} (SHA-256 {start['sha256'][:12]}...): "
          f"{start['licence'] or 'no licence recorded'}")


def seen_by_start(models, table):
    """evaluate.py: the scored images the models' start learnt from (itself or its lesion), said
    as a warning, since their scores flatter the models; {} when there is no start."""
    starts = [info["start"] for _, info in models.members if info.get("start")]
    if not starts:
        return {}
    lesions = set().union(*(start["lesions"] for start in starts))
    images = set().union(*(start["images"] for start in starts))
    groups = table["group"] if "group" in table else table["isic_id"]
    seen = table["isic_id"].isin(images) | groups.isin(lesions)
    if seen.any():
        print(f"warning: {seen.sum()} of the {len(table)} scored images (e.g. "
              f"{', '.join(table['isic_id'][seen].head(3))}) show lesions that the start "
              f"{starts[0]['file']} learnt from: their scores flatter the model; score lesions "
              "it never saw")
    return {"scored_images_seen_by_start": int(seen.sum())}
