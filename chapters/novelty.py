"""Unlike anything it learnt from: a warning when an image lies far from the training images.

A classifier answers every image it is given. Handed a phone photograph, a clinical close-up or a
picture that is not skin at all, a model trained on dermoscopy still says "P(malignant) = 0.42",
with the same confidence as for a lesion like its training images, and that number means nothing.
The model's own features can tell: the pooled features before its head (1,280 numbers for
EfficientNet-Lite0), scaled to length 1, of images like the training ones gather in one region, and
an image far from it is one the model never learnt to read. So each scored image also gets its
distance from the training images, and a flag, `unlike_training`, where that distance is beyond
what images like the training ones reach.

The distance (Mahalanobis, as Lee et al., NeurIPS 2018 use it on a network's features): how far an
image's features lie from the training images' mean, measured in each direction against how much
the training images vary in it. A few hundred images cannot estimate 1,280 x 1,280 covariances, so
the covariance is reduced (probabilistic PCA, Tipping & Bishop 1999): the COMPONENTS directions in
which the training images vary most keep their own variances, and every other direction shares one,
the mean of the rest. The statistics are of bounded size whatever the training set: a mean, a
COMPONENTS x features basis and COMPONENTS + 1 variances, found from sums accumulated batch by batch
(never all the features at once), on at most STATISTICS_IMAGES training images.

The cut-off. Training images sit closer to their own statistics than new images like them do, so
the cut-off is set on held-out images: the val split, or with --folds each fold's own held-out
images (every train and val image, each measured by the one model that never saw it). Their
log-distances are summarised by a mean and a standard deviation, and an image's distance is
reported as how many of those standard deviations it lies beyond the held-out mean. 60 validation
images cannot place a 1 % cut-off by counting (it would rest on less than one image), but they can
estimate a mean and a spread: the cut-off assumes the log-distances of images like the training ones
fall off as a normal distribution's, and flags the share --unlike-share (1 %) of it, 2.33 standard
deviations. Whether that holds is measured on images the model never saw (benchmarks/novelty.py).
A fold ensemble's rule: each fold's model measures the distance to its own training images, in its
own held-out standard deviations, and the image's distance is the mean over the folds (an ensemble
of checkpoints: over all their models).

train.py stores the statistics in the checkpoint (add_statistics); evaluate.py's report counts the
flagged images and writes both columns to predictions.csv, --predict to OUT/predictions.csv beside
submission.csv, and --image says it in words (check). A checkpoint from before has no statistics:
then there is no flag, and a note says so.
"""
import argparse
from statistics import NormalDist

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from chapters import cross_validation
from chapters.linear_probe import head_name
from dataset import CustomDataset, build_transforms, loader_options, read_split
from helpers.files import save_atomically
from model import FoldEnsemble, load_checkpoint, read_checkpoint, save_checkpoint

COMPONENTS = 32             # directions with a variance of their own
STATISTICS_IMAGES = 20_000  # the most training images the statistics are computed on


def add_training_options(parser):
    """train.py's option: how many images like the training ones the flag may mark."""
    parser = parser.add_argument_group("the 'unlike training' flag (chapters/novelty.py)")
    parser.add_argument("--unlike-share", type=unlike_share, default=0.01, metavar="S",
                        help="the share of images like the training ones that the "
                             "'unlike training' flag may mark: sets its cut-off")


def unlike_share(text):
    """An argparse type: a share strictly between 0 and 0.5."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"must be above 0 and below 0.5, not {text}")
    return value


# --- 1. The features: what the model sees in an image, before its head --------------------------

@torch.inference_mode()
def feature_batches(model, table, transform, device, batch_size=64, workers=0):
    """The pooled features of every image of the table, scaled to length 1, one batch at a time."""
    name = head_name(model)
    head = getattr(model, name)
    setattr(model, name, nn.Identity())  # for now the model ends with its features
    model.eval()
    try:
        loader = DataLoader(CustomDataset(table, transform), batch_size, shuffle=False,
                            **loader_options(workers))
        for images, _ in loader:
            features = model(images.to(device)).double().cpu()
            # Their direction, not their length: images unlike the training ones differ in which
            # features light up more than in how much (measured: benchmarks/novelty.py)
            yield features / features.norm(dim=1, keepdim=True).clamp(min=1e-12)
    finally:
        setattr(model, name, head)


# --- 2. The statistics, from the training images -------------------------------------------------

def fit_statistics(batches, components=COMPONENTS):
    """The training features' mean, their COMPONENTS main directions (a basis, one per row) with
    their variances, and the variance every other direction shares: from sums, batch by batch."""
    count, total, products = 0, 0.0, 0.0
    for features in batches:
        count += len(features)
        total = total + features.sum(0)
        products = products + features.T @ features
    mean = total / count
    covariance = products / count - torch.outer(mean, mean)
    variances, directions = torch.linalg.eigh(covariance)  # ascending
    variances, directions = variances.flip(0).clamp(min=0), directions.flip(1)
    kept = min(components, count - 1, len(mean) - 1)
    floor = 1e-6 * variances[0].item() + 1e-12  # no direction counted as never varying
    return {"mean": mean.float(), "basis": directions[:, :kept].T.contiguous().float(),
            "variances": variances[:kept].clamp(min=floor).float(),
            "residual_variance": max(variances[kept:].mean().item(), floor), "images": count}


def log_distance(features, statistics):
    """log of the squared distance of each image's features: along the main directions each
    divided by its own variance, the rest by the shared one."""
    centred = features.double() - statistics["mean"].double()
    along = centred @ statistics["basis"].double().T
    inside = (along ** 2 / statistics["variances"].double()).sum(1)
    rest = ((centred ** 2).sum(1) - (along ** 2).sum(1)).clamp(min=0)
    return (inside + rest / statistics["residual_variance"]).clamp(min=1e-300).log()


def member_statistics(model, train_table, held_out_table, transform, device, seed):
    """One model's statistics from (at most STATISTICS_IMAGES of) its training images, and the mean
    and spread of its held-out images' log-distances."""
    if len(train_table) > STATISTICS_IMAGES:
        train_table = train_table.sample(n=STATISTICS_IMAGES, random_state=seed)
    statistics = fit_statistics(feature_batches(model, train_table, transform, device))
    held_out = torch.cat([log_distance(features, statistics) for features in
                          feature_batches(model, held_out_table, transform, device)])
    return {**statistics, "held_out_mean": held_out.mean().item(),
            "held_out_std": held_out.std().clamp(min=1e-6).item(), "held_out": len(held_out)}


def add_statistics(args, device):
    """train.py, once the model is trained: each model's statistics (one per fold) and the cut-off,
    stored in the checkpoint."""
    if args.dry_run:
        return
    checkpoint = read_checkpoint(args.out)
    model, info = load_checkpoint(args.out, device)
    transform = build_transforms(info["img_size"], train=False, mean=info["mean"], std=info["std"])
    if args.folds > 1:
        members = model.members
        tables = [cross_validation.train_and_val(args.data, fold, args.folds, args.seed)
                  for fold in range(1, args.folds + 1)]
    else:
        members, tables = [model], [(read_split(args.data, "train"), read_split(args.data, "val"))]
    found = [member_statistics(member, train, held_out, transform, device, args.seed)
             for member, (train, held_out) in zip(members, tables)]
    cutoff = NormalDist().inv_cdf(1 - args.unlike_share)
    checkpoint["novelty"] = {"members": found, "cutoff": cutoff, "share": args.unlike_share}
    save_checkpoint(args.out, checkpoint.pop("state_dict"), **checkpoint)
    held_out = sum(statistics["held_out"] for statistics in found)
    print(f"'unlike training' statistics of {len(found)} model(s), from "
          f"{sum(statistics['images'] for statistics in found)} training images; cut-off "
          f"{cutoff:.2f} held-out standard deviations (to flag {args.unlike_share:.1%} of images "
          f"like them), set on {held_out} held-out images")


# --- 3. Every scored image measured ---------------------------------------------------------------

def check(models, table):
    """evaluate.py: each image's distance from the training images (the mean, over every model, of
    its held-out standard deviations) and its flag, as columns {distance_from_training,
    unlike_training}; {} with a note for checkpoints without statistics."""
    records = [info.get("novelty") for _, info in models.members]
    if not all(records):
        print("note: no 'unlike training' flag: a checkpoint was trained before train.py stored "
              "the statistics it needs (train it again)")
        return {}
    distances = []
    for index, ((model, _), record) in enumerate(zip(models.members, records)):
        members = model.members if isinstance(model, FoldEnsemble) else [model]
        for member, statistics in zip(members, record["members"]):
            log_distances = torch.cat([log_distance(features, statistics) for features in
                                       feature_batches(member, table, models.transform(index),
                                                       models.device, models.batch_size,
                                                       models.workers)])
            distances.append((log_distances - statistics["held_out_mean"])
                             / statistics["held_out_std"])
    distance = torch.stack(distances).mean(0)
    flagged = distance > records[0]["cutoff"]
    return {"distance_from_training": distance.tolist(), "unlike_training": flagged.int().tolist()}


def summary(columns, models):
    """metrics.json's entries, printed: how many images are flagged, at which cut-off."""
    if not columns:
        return {}
    record = models.members[0][1]["novelty"]
    count, total = sum(columns["unlike_training"]), len(columns["unlike_training"])
    print(f"unlike training: {count} of {total} images ({count / total:.1%}) lie beyond "
          f"{record['cutoff']:.2f} held-out standard deviations from the training images "
          "(their probabilities mean little)")
    return {"unlike_training": count, "unlike_training_cutoff": record["cutoff"],
            "unlike_training_share_allowed": record["share"]}


def in_words(columns, models):
    """--image: the flag, said."""
    if not columns:
        return None
    distance = columns["distance_from_training"][0]
    cutoff = models.members[0][1]["novelty"]["cutoff"]
    if columns["unlike_training"][0]:
        return (f"WARNING: this image is unlike any the model learnt from ({distance:.1f} held-out "
                f"standard deviations from its training images, beyond {cutoff:.2f}): not "
                "dermoscopy of a lesion like them? Its probability means little")
    return (f"the image is like those the model learnt from ({distance:.1f} held-out standard "
            f"deviations, flagged beyond {cutoff:.2f})")


def write_predictions(table, probabilities, columns, path):
    """--predict: OUT/predictions.csv beside submission.csv, each image's probability with its
    distance and flag (submission.csv keeps the two columns a submission has)."""
    predictions = pd.DataFrame({"isic_id": table["isic_id"], "probability_malignant": probabilities,
                                **columns})
    save_atomically(path, lambda tmp: predictions.to_csv(tmp, index=False))
