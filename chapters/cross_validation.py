"""Cross-validation (train.py --folds K): with a few hundred labels, every one of them
validates once.

One model chooses its epoch and its threshold on the val split: 60 images when there are 400 in all,
about 30 of them malignant, too few to choose on. Cross-validation pools the train and val splits
and deals them into K folds; K models each train on K-1 folds and validate on the one left out.
Every labelled image then gets one honest prediction, from the model that never saw it (its
"out-of-fold" prediction), and evaluate.py chooses the threshold on all of them. The test split
stays out.

How train.py uses it (train_folds, handed train.py's train_model):
1. for each fold k, `train_and_val` gives the training and validation tables, and train.py trains
   and saves that fold's model as <checkpoint>-fold<k>.pt, with its own -log.csv and -curves.png
   (helpers/resume.py: an interrupted run carries on in the fold it was in);
2. `join` makes the K models one checkpoint: their weights side by side, as model.py's FoldEnsemble
   holds them (its output is the mean of their probabilities, so evaluate.py scores it as any
   model), and their out-of-fold predictions, from which the metadata's fusion and the threshold
   are set. The fold files, now inside it, are deleted.

Example (the README's recommended recipe for a few hundred labels):
  python train.py --model efficientnet_lite0 --pretrained --folds 5 --patience 0 \
      --out checkpoints/lite0-folds5.pt
"""
from pathlib import Path

import pandas as pd

from dataset import read_split
from helpers.files import DataError, number
from helpers.resume import fold_path, folds_to_train
from model import read_checkpoint
from prepare_data import deal_groups


def cross_validation_folds(table, folds, seed):
    """The fold (0 to folds-1) of each row of the table. Whole groups (a lesion's or a patient's
    images, see prepare_data.py) go to one fold, or a model would validate on lesions it trained on;
    they are dealt as prepare_data.py deals its splits, class by class, so that each fold gets a
    K-th of each."""
    groups = table["group"] if "group" in table else table["isic_id"]
    shares = dict.fromkeys(range(folds), 1 / folds)
    return deal_groups(table.assign(group=groups), shares, seed).to_numpy()


def train_and_val(data_dir, fold, folds, seed):
    """The tables of training and validation images of fold number `fold` (1 to folds): the train
    and val splits pooled, that fold validating and the others training."""
    pool = pd.concat([read_split(data_dir, "train"), read_split(data_dir, "val")],
                     ignore_index=True)
    fold_of = cross_validation_folds(pool, folds, seed)
    per_class = [len(set(fold_of[pool["label"] == label])) for label in (0, 1)]
    if min(per_class) < folds:  # then a fold would validate on one class only, or on nothing
        raise DataError(f"{Path(data_dir) / 'labels.csv'}: {folds} folds need both classes in "
                        f"every fold, but the train and val splits fill only {min(per_class)}; "
                        "use fewer --folds")
    left_out = fold_of == fold - 1
    return pool[~left_out].reset_index(drop=True), pool[left_out].reset_index(drop=True)


def join(fold_checkpoints):
    """The kept epoch of a cross-validated run, as train.py saves one: each fold's weights under
    members.<k>. (model.FoldEnsemble's names), the epochs each kept, and the out-of-fold predictions
    of every train and val image."""
    folds = list(fold_checkpoints)
    weights = {f"members.{k}.{name}": tensor for k, fold in enumerate(folds)
               for name, tensor in fold["state_dict"].items()}
    # Sorted by image: runs with other seeds (other folds) then list the same images in the
    # same order.
    held_out = pd.concat([pd.DataFrame(fold["val_predictions"])
                          for fold in folds]).sort_values("isic_id")
    val = {"isic_id": held_out["isic_id"].tolist(),
           "probabilities": held_out["image_probability"].tolist(), "labels": held_out["label"].tolist()}
    return {"epoch": [fold["epoch"] for fold in folds], "weights": weights, "val": val}


def add_training_options(parser):
    parser = parser.add_argument_group("cross-validation (chapters/cross_validation.py)")
    parser.add_argument("--folds", type=number(int, 1), default=1, metavar="K",
                        help="cross-validation: K models, each validated on a K-th of the train "
                             "and val images, in one checkpoint that averages them")


def train_folds(args, hardware, interrupted, train_model, save_run):
    """train.py --folds K: the K models, trained by train.py's train_model (with --resume, from the
    fold the run stopped in), then joined into one checkpoint by its save_run."""
    for fold, carry_on in folds_to_train(interrupted, args.folds):
        print(f"fold {fold} of {args.folds}")
        tables = train_and_val(args.data, fold, args.folds, args.seed)
        train_model(args, hardware, *tables, fold_path(args.out, fold), carry_on,
                    previous=fold_path(args.out, fold - 1) if fold > 1 else None,
                    draw=fold == 1, fold=fold)  # one picture of what they see, for all folds
    if hardware.rank == 0:  # the other processes hold the same: one copy is written
        paths = [fold_path(args.out, fold) for fold in range(1, args.folds + 1)]
        best = join(read_checkpoint(path) for path in paths)
        summary = save_run(args, args.out, best, folds=args.folds)
        for path in paths:  # now inside the one checkpoint
            path.unlink()
        print(f"{args.folds} folds, out-of-fold AUC {summary['auc']:.3f} on "
              f"{len(best['val']['labels'])} images, saved to {args.out}")

