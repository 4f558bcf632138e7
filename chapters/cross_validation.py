"""Cross-validation (train.py --folds K): with a few hundred labels, every one of them
validates once.

One model chooses its epoch and its threshold on the val split: 60 images when there are 400 in all,
about 30 of them malignant, too few to choose on. Cross-validation pools the train and val splits
and deals them into K folds; K models each train on K-1 folds and validate on the one left out.
Every labelled image then gets one honest prediction, from the model that never saw it (its
"out-of-fold" prediction), and evaluate.py chooses the threshold on all of them. The test split
stays out.

How train.py uses it:
1. for each fold k, `train_and_val` gives the training and validation tables, and train.py's loop
   trains and saves that fold's model as <checkpoint>-fold<k>.pt (helpers/resume.py: an interrupted
   run carries on in the fold it was in);
2. `join` makes the K models one checkpoint: their weights side by side, as model.py's FoldEnsemble
   holds them (its output is the mean of their probabilities, so evaluate.py scores it as any
   model), and their out-of-fold predictions, from which the metadata's fusion and the threshold
   are set.
"""
from pathlib import Path

import pandas as pd

from chapters.metrics import summarise
from dataset import read_split
from helpers.files import DataError
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
    of every train and val image with their loss and AUC."""
    folds = list(fold_checkpoints)
    weights = {f"members.{k}.{name}": tensor for k, fold in enumerate(folds)
               for name, tensor in fold["state_dict"].items()}
    # Sorted by image: runs with other seeds (other folds) then list the same images in the
    # same order.
    held_out = pd.concat([pd.DataFrame(fold["val_predictions"])
                          for fold in folds]).sort_values("isic_id")
    val = {"isic_id": held_out["isic_id"].tolist(),
           **summarise(held_out["probability"].tolist(), held_out["label"].tolist())}
    return {"epoch": [fold["epoch"] for fold in folds], "weights": weights, "val": val}
