"""Unlike anything it learnt from: a warning when an image lies far from the training images.

A classifier answers every image it is given. Handed a phone photograph, a clinical close-up or a
picture that is not skin at all, a model trained on dermoscopy still says "P(malignant) = 0.42",
with the same confidence as for a lesion like its training images, and that number means nothing.
The model's own features can tell. Not only the last ones, before its head, which were trained to
tell benign from malignant and can place a photograph of a face among the lesions: each stage of
the backbone describes the image at its own scale, from colours and edges in the first to shapes in
the last. Each stage's output, averaged over the image (one number per channel: 784 for
EfficientNet-Lite0's seven stages), all stages side by side and scaled to length 1, is the image's
description; images like the training ones gather in one region, and an image far from it is one
the model never learnt to read (measured: benchmarks/novelty.py ranks every photograph above every
test lesion this way, where the last features alone rank them at 0.95). So each scored image also
gets its distance from the training images, and a flag, `unlike_training`, where that distance is
beyond what images like the training ones reach.

The distance (Mahalanobis, as Lee et al., NeurIPS 2018 use it on a network's features): how far an
image's features lie from the training images' mean, measured in each direction against how much
the training images vary in it. A few hundred images cannot estimate 784 x 784 covariances, so the
covariance is reduced (probabilistic PCA, Tipping & Bishop 1999): the COMPONENTS directions in
which the training images vary most keep their own variances, and every other direction shares one,
the mean of the rest. Two are enough (chosen on a development pool of lesions and half of the
photographs: RESULTS.md): the distance mostly counts how far an image strays from where the
training images lie. The statistics are of bounded size whatever the training set: a mean, a
COMPONENTS x features basis and COMPONENTS + 1 variances, found from sums accumulated batch by batch
(never all the features at once), on at most STATISTICS_IMAGES training images.

The cut-off. Training images sit closer to their own statistics than new images like them do, so
the cut-off is set on held-out images: the val split, or with --folds each fold's own held-out
images (every train and val image, each measured by the one model that never saw it). Each model's
held-out log-distances are counted in their own standard deviations from their mean, and the
cut-off is read off these held-out distances by counting, assuming no shape for their tail: of n
held-out images, the ceil((n + 1)(1 - share))-th smallest distance, where share is --unlike-share
(1 %). A new image like the held-out ones is then flagged with a chance of at most share (it is as
likely to fall in any of the n + 1 gaps the held-out distances leave; conformal prediction, Vovk et
al. 2005). 340 out-of-fold images place a 1 % cut-off at their third largest distance; with fewer
than 1 / share - 1 images (60 validation images, 1 %) even the largest held-out distance promises
only 1 / (n + 1), and that is the cut-off, said when it is set. A fold ensemble's rule: each fold's
model measures the distance to its own training images, in its own held-out standard deviations,
and the image's distance is the mean over the folds (an ensemble of checkpoints: over all their
models). Other lesions than the budget's, from the same collection, come out near the promise and
above it (1.0 % and 2.0 % of two pools of 1,500 for 1 %: benchmarks/novelty.py).

train.py stores the statistics in the checkpoint (add_statistics); evaluate.py's report counts the
flagged images and writes both columns to predictions.csv, --predict to OUT/predictions.csv beside
submission.csv, and --image says it in words (check). A checkpoint from before has no statistics:
then there is no flag, and a note says so.
"""
import math

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from chapters import cross_validation
from dataset import CustomDataset, build_transforms, loader_options, read_split
from helpers.files import number, save_atomically
from model import FoldEnsemble, load_checkpoint, read_checkpoint, save_checkpoint

COMPONENTS = 2              # directions with a variance of their own
STATISTICS_IMAGES = 20_000  # the most training images the statistics are computed on


def add_training_options(parser):
    """train.py's option: how many images like the training ones the flag may mark."""
    parser = parser.add_argument_group("the 'unlike training' flag (chapters/novelty.py)")
    share = number(float, 0, 0.5, low_open=True, high_open=True)
    parser.add_argument("--unlike-share", type=share, default=0.01, metavar="S",
                        help="the share of images like the training ones that the "
                             "'unlike training' flag may mark: sets its cut-off")



# --- 1. The features: what the model sees in an image, before its head --------------------------

def stage_ends(model):
    """The modules whose outputs describe the image stage by stage: EfficientNet-Lite0's last block
    of each stage (the next one changes the width or the size), a ResNet's four layers, the
    baseline's four blocks (each ends by halving the image)."""
    if hasattr(model, "_blocks"):
        blocks = list(model._blocks)
        return [block for block, after in zip(blocks, blocks[1:] + [None])
                if after is None or not after.residual]
    if hasattr(model, "layer4"):
        return [model.layer1, model.layer2, model.layer3, model.layer4]
    return [module for module in model.features if isinstance(module, nn.MaxPool2d)]


@torch.inference_mode()
def feature_batches(model, table, transform, device, batch_size=64, workers=0):
    """Each image of the table described by every stage of the model: each stage's output averaged
    over the image, side by side, scaled to length 1. One batch at a time."""
    outputs = []
    hooks = [module.register_forward_hook(lambda _, __, output: outputs.append(output))
             for module in stage_ends(model)]
    model.eval()
    try:
        loader = DataLoader(CustomDataset(table, transform), batch_size, shuffle=False,
                            **loader_options(workers))
        for images, _ in loader:
            outputs.clear()
            model(images.to(device))
            yield described(outputs, torch.float64).cpu()
    finally:
        for hook in hooks:
            hook.remove()


def described(outputs, dtype=torch.float32):
    """The images' description from their stages' outputs: each averaged over the image, side by
    side, scaled to length 1. Their direction, not their length: images unlike the training ones
    differ in which features light up more than in how much (measured: benchmarks/novelty.py)."""
    features = torch.cat([output.mean(dim=(2, 3)) for output in outputs], 1).to(dtype)
    return features / features.norm(dim=1, keepdim=True).clamp(min=1e-12)


def models_of(model):
    """The models a checkpoint holds: a fold ensemble's members, or the one model."""
    return list(model.members) if isinstance(model, FoldEnsemble) else [model]


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


def held_out_spreads(log_distances, statistics):
    """Log-distances counted in held-out standard deviations from the held-out mean."""
    return (log_distances - statistics["held_out_mean"]) / statistics["held_out_std"]


def log_distance(features, statistics, dtype=torch.float64):
    """log of the squared distance of each image's features: along the main directions each
    divided by its own variance, the rest by the shared one."""
    centred = features.to(dtype) - statistics["mean"].to(dtype)
    along = centred @ statistics["basis"].to(dtype).T
    inside = (along ** 2 / statistics["variances"].to(dtype)).sum(1)
    rest = ((centred ** 2).sum(1) - (along ** 2).sum(1)).clamp(min=0)
    smallest = torch.finfo(dtype).tiny
    return (inside + rest / statistics["residual_variance"]).clamp(min=smallest).log()


def member_statistics(model, train_table, held_out_table, transform, device, seed):
    """One model's statistics from (at most STATISTICS_IMAGES of) its training images, the mean
    and spread of its held-out images' log-distances, and those distances counted in that spread
    (for the cut-off; not stored)."""
    if len(train_table) > STATISTICS_IMAGES:
        train_table = train_table.sample(n=STATISTICS_IMAGES, random_state=seed)
    statistics = fit_statistics(feature_batches(model, train_table, transform, device))
    held_out = torch.cat([log_distance(features, statistics) for features in
                          feature_batches(model, held_out_table, transform, device)])
    statistics.update(held_out_mean=held_out.mean().item(),
                      held_out_std=held_out.std().clamp(min=1e-6).item(), held_out=len(held_out))
    return {**statistics, "held_out_distances": held_out_spreads(held_out, statistics)}


def cutoff_by_counting(distances, share):
    """The ceil((n + 1)(1 - share))-th smallest of n held-out distances (the largest when there are
    too few for share), and the share of images like them it may flag: (n + 1 - rank) / (n + 1)."""
    ordered = torch.sort(torch.as_tensor(distances, dtype=torch.float64)).values
    # - 1e-9: a product meant to be whole may come out a hair above it in floating point
    rank = min(math.ceil((len(ordered) + 1) * (1 - share) - 1e-9), len(ordered))
    return ordered[rank - 1].item(), (len(ordered) + 1 - rank) / (len(ordered) + 1)


def add_statistics(args, device):
    """train.py, once the model is trained: each model's statistics (one per fold) and the cut-off,
    stored in the checkpoint."""
    if args.dry_run:
        return
    checkpoint = read_checkpoint(args.out)
    model, info = load_checkpoint(args.out, device)
    transform = build_transforms(info["img_size"], train=False, mean=info["mean"], std=info["std"])
    if args.folds > 1:
        tables = [cross_validation.train_and_val(args.data, fold, args.folds, args.seed)
                  for fold in range(1, args.folds + 1)]
    else:
        tables = [(read_split(args.data, "train"), read_split(args.data, "val"))]
    found = [member_statistics(member, train, held_out, transform, device, args.seed)
             for member, (train, held_out) in zip(models_of(model), tables)]
    held_out = torch.cat([statistics.pop("held_out_distances") for statistics in found])
    cutoff, promised = cutoff_by_counting(held_out, args.unlike_share)
    checkpoint["novelty"] = {"members": found, "cutoff": cutoff, "share": args.unlike_share,
                             "held_out": len(held_out)}
    save_checkpoint(args.out, checkpoint.pop("state_dict"), **checkpoint)
    print(f"'unlike training' statistics of {len(found)} model(s), from "
          f"{sum(statistics['images'] for statistics in found)} training images; cut-off "
          f"{cutoff:.2f} held-out standard deviations, counted on {len(held_out)} held-out images: "
          f"flags at most {promised:.1%} of images like them")
    if promised > args.unlike_share:
        print(f"note: {len(held_out)} held-out images are too few to set a cut-off for "
              f"--unlike-share {args.unlike_share}: the largest of their distances is used, which "
              f"may flag up to {promised:.1%}")


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
        for member, statistics in zip(models_of(model), record["members"]):
            log_distances = torch.cat([log_distance(features, statistics) for features in
                                       feature_batches(member, table, models.transform(index),
                                                       models.device, models.batch_size,
                                                       models.workers)])
            distances.append(held_out_spreads(log_distances, statistics))
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


# --- 4. The flag inside the exported model ---------------------------------------------------------

class Distance(nn.Module):
    """check's distance as one module, for the ONNX export (chapters/onnx_export.py): hooked on the
    stages of a model (each of a fold ensemble's), it reads what the model's forward pass leaves
    there; calling it gives each image's distance, in float32, as check computes it in float64."""

    def __init__(self, model, record):
        super().__init__()
        members = models_of(model)
        self.outputs, self.cutoff = [], record["cutoff"]
        for member in members:
            for module in stage_ends(member):
                module.register_forward_hook(lambda _, __, output: self.outputs.append(output))
        self.stages = len(stage_ends(members[0]))
        self.statistics = [{key: statistics[key] for key in ("mean", "basis", "variances",
                                                             "residual_variance", "held_out_mean",
                                                             "held_out_std")}
                           for statistics in record["members"]]
        for k, statistics in enumerate(self.statistics):  # so that the export holds them
            for key in ("mean", "basis", "variances"):
                self.register_buffer(f"{key}_{k}", statistics[key])

    def forward(self):
        distances = []
        for k, statistics in enumerate(self.statistics):
            features = described(self.outputs[k * self.stages:(k + 1) * self.stages])
            buffers = {key: getattr(self, f"{key}_{k}") for key in ("mean", "basis", "variances")}
            log_distances = log_distance(features, {**statistics, **buffers}, torch.float32)
            distances.append(held_out_spreads(log_distances, statistics))
        self.outputs.clear()
        return torch.stack(distances).mean(0)
