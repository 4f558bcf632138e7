"""Calibration: does P(malignant) = 0.3 come true for three lesions in ten, and in which population?

A model that ranks well (a high AUC) can still give probabilities a clinic cannot read. Two things
go wrong, and this chapter measures and names both.

1. Calibration, measured on labelled images (evaluate.py's report):
   - the Brier score, the mean of (p - y)^2: 0 is perfect, 0.25 is saying 0.5 to everyone;
   - the reliability diagram: the images put into bins by their probability, and in each bin the
     mean probability against the share that truly is malignant. A calibrated model sits on the
     diagonal. BINS = 10 equal-width bins, (0, 0.1], (0.1, 0.2] ... (an image exactly on an edge
     counts in the bin below, as scikit-learn counts it): with a few hundred to 1,500 scored images,
     most of them below 0.3, 15 bins would leave the upper bins a handful of images each, and
     their shares noise;
   - the expected calibration error (ECE): the distance between the two in each bin, weighted by
     the bin's share of images (the positive-class definition: the probability of malignancy);
   - the calibration intercept and slope (Van Calster et al., BMC Medicine 2019): a logistic
     regression of the labels on logit(p). The slope is the coefficient of logit(p): 1 is right,
     below 1 the probabilities are too extreme (overconfident), above 1 too timid. The intercept,
     "calibration in the large", is the bias fitted with logit(p) as a fixed offset: 0 is right,
     below 0 the probabilities are too high on average.
2. Prevalence: every probability assumes a share of malignant lesions, the one the model learnt
   from. A model trained on a budget drawn half malignant assumes one lesion in two; a screening
   clinic sees one in fifty. Which share it is depends on how the model was trained
   (prevalence_assumed names each case), train.py records it in the checkpoint, and every output
   states it. `--prevalence P` moves each probability to a population where a share P is
   malignant, by Bayes' rule (only the prior odds change):
       logit(p') = logit(p) + logit(P) - logit(P_assumed)
   The decision threshold moves the same way, so every image keeps its call, and sensitivity and
   specificity are unchanged; the probabilities, and the PPV and NPV read from them, become the
   population's. With --refit-fusion it is refused: refitting the fusion on a clinic's labelled
   images already sets the base rate to that clinic's own, and --prevalence would move it twice.
The metrics are written by hand; benchmarks/metrics_vs_sklearn.py checks the Brier score and the
bins against scikit-learn's.
"""
import bisect
import math

import torch

from chapters.metadata import logistic_regression
from dataset import read_labels
from helpers.charts import draw_reliability
from helpers.files import number
from model import read_checkpoint, save_checkpoint

BINS = 10

REFIT_CONFLICT = ("--prevalence with --refit-fusion: refitting the fusion on the --threshold-from "
                  "images already sets their base rate, and --prevalence would move it a second "
                  "time; choose one (--refit-fusion for a clinic with labels, --prevalence for a "
                  "known share of malignant lesions)")


def add_evaluation_options(parser):
    """evaluate.py's option: the share of malignant lesions the probabilities are to be read for."""
    parser = parser.add_argument_group("calibration and prevalence (chapters/calibration.py)")
    share = number(float, 0, 1, low_open=True, high_open=True)
    parser.add_argument("--prevalence", type=share, default=None, metavar="P",
                        help="give every probability (and move the threshold with it) for a "
                             "population where this share is malignant, e.g. 0.02 for screening "
                             "(default: the share the model learnt from, which the report states)")


def refuse_conflicts(args, parser):
    if args.prevalence and args.refit_fusion:
        parser.error(REFIT_CONFLICT)



# --- 1. Calibration, by hand ----------------------------------------------------------------------

def brier_score(labels, probabilities):
    """The mean squared distance between each probability and what came true (0 or 1)."""
    return sum((p - y) ** 2 for p, y in zip(probabilities, labels)) / len(labels)


def reliability_bins(labels, probabilities, bins=BINS):
    """The equal-width bins (low, high], the first [0, high]: for each, the number of images, their
    mean probability and the share of them that is malignant (None for an empty bin)."""
    inner_edges = [k / bins for k in range(1, bins)]
    members = [[] for _ in range(bins)]
    for p, y in zip(probabilities, labels):
        members[bisect.bisect_left(inner_edges, p)].append((p, y))  # edges below p, strictly
    return [{"from": k / bins, "to": (k + 1) / bins, "images": len(inside),
             "mean_probability": sum(p for p, _ in inside) / len(inside) if inside else None,
             "observed_share": sum(y for _, y in inside) / len(inside) if inside else None}
            for k, inside in enumerate(members)]


def expected_calibration_error(bins):
    """The gap between mean probability and observed share in each bin, weighted by its images."""
    total = sum(b["images"] for b in bins)
    return sum(b["images"] / total * abs(b["mean_probability"] - b["observed_share"])
               for b in bins if b["images"])


def log_odds(probabilities):
    return torch.logit(torch.tensor(probabilities, dtype=torch.float64).clamp(1e-6, 1 - 1e-6))


def calibration_intercept_and_slope(labels, probabilities):
    """Van Calster's two numbers: the intercept of y on logit(p) held as an offset (calibration in
    the large), and the slope of y on logit(p). NaN when one class is missing (no fit)."""
    if len(set(labels)) < 2:
        return math.nan, math.nan
    x, y = log_odds(probabilities), torch.tensor(labels)
    free = torch.tensor([1e-6])  # a penalty this small leaves the bias free
    intercept = logistic_regression(torch.zeros(len(x), 0), y, torch.zeros(1), free, offset=x)[0]
    slope = logistic_regression(x[:, None], y, torch.zeros(2), free.repeat(2))[1]
    return intercept.item(), slope.item()


# --- 2. Prevalence: the share of malignant lesions the probabilities assume -----------------------
# Each way of training gives the model a prior of its own, and its probabilities assume it:
PREVALENCE_CASES = {
    # train.py's fusion fitted its bias on held-out images (the val split, or with --folds every
    # train and val image scored by the fold that never saw it): their share is the prior.
    "fusion": "the metadata's fusion set its bias on {n} held-out images, {share:.1%} malignant",
    # Each class drawn equally often: the model sees one lesion in two malignant.
    "balanced sampler": "--balanced-sampler drew each class equally often",
    # Inverse-frequency weights make both classes count the same in the loss: the same as 1 in 2.
    "class weights": "--class-weights made each class count the same in the loss",
    # Every malignant image and K times as many benign ones (fewer if there are not so many).
    "negatives per positive": "--neg-per-pos {k}: each epoch {positives} malignant images and "
                              "{negatives} benign ones",
    # Every image once: the training images' own share.
    "plain": "the training images: {positives} malignant of {n}",
}


def prevalence_assumed(checkpoint, table=None):
    """(the share of malignant its probabilities assume, the case of PREVALENCE_CASES, its words)
    for one checkpoint. `table` is the training data's labels.csv (read_labels), needed for a model
    without fusion; where it is missing, the validation images stand in for the training images
    (the splits are dealt class by class, so their shares agree)."""
    args, held_out = checkpoint.get("args", {}), checkpoint["val_predictions"]["label"]
    if checkpoint.get("fusion"):
        found = sum(held_out) / len(held_out)
        return found, "fusion", PREVALENCE_CASES["fusion"].format(n=len(held_out), share=found)
    if args.get("balanced_sampler"):
        return 0.5, "balanced sampler", PREVALENCE_CASES["balanced sampler"]
    if args.get("class_weights"):
        return 0.5, "class weights", PREVALENCE_CASES["class weights"]
    labels = training_labels(checkpoint, table)
    positives, negatives = sum(labels), len(labels) - sum(labels)
    if args.get("neg_per_pos"):
        k = args["neg_per_pos"]
        drawn = min(negatives, k * positives)
        return (positives / (positives + drawn), "negatives per positive",
                PREVALENCE_CASES["negatives per positive"].format(k=k, positives=positives,
                                                                  negatives=drawn))
    return (positives / len(labels), "plain",
            PREVALENCE_CASES["plain"].format(positives=positives, n=len(labels)))


def training_labels(checkpoint, table):
    """The labels of the images the model trained on: the train split, or with --folds the train
    and val splits pooled (each fold trains on all but a K-th of them, dealt class by class)."""
    if table is None:
        return list(checkpoint["val_predictions"]["label"])
    splits = ["train", "val"] if checkpoint.get("folds", 1) > 1 else ["train"]
    return table.loc[table["split"].isin(splits), "label"].astype(int).tolist()


def record_prevalence(args):
    """train.py, once training (and the fusion) is done: the checkpoint records the share its
    probabilities assume, and says it."""
    checkpoint = read_checkpoint(args.out)
    assumed, case, words = prevalence_assumed(checkpoint, read_labels(args.data))
    checkpoint["prevalence"] = {"assumed": assumed, "case": case, "because": words}
    save_checkpoint(args.out, checkpoint.pop("state_dict"), **checkpoint)
    print(f"its probabilities assume a population {assumed:.1%} malignant ({words})")


def recorded_prevalence(checkpoint):
    """The checkpoint's record, or for a checkpoint from before it, derived from what it holds."""
    if "prevalence" in checkpoint:
        return checkpoint["prevalence"]
    assumed, case, words = prevalence_assumed(checkpoint)
    return {"assumed": assumed, "case": case, "because": words}


def to_prevalence(probabilities, prevalence):
    """Each probability moved from the assumed prevalence to the target one (Bayes' rule on the
    odds); unchanged without a target. 0 and 1 stay where they are."""
    if not prevalence or prevalence.get("target") is None:
        return list(probabilities)
    shift = logit(prevalence["target"]) - logit(prevalence["assumed"])
    return [p if p in (0, 1) else 1 / (1 + math.exp(-(logit(p) + shift))) for p in probabilities]


def logit(p):
    return math.log(p / (1 - p))


def use_prevalence(models, target, threshold):
    """evaluate.py, once the threshold is chosen: the models' probabilities are from now on given
    for the target population (models.prevalence; the assumed one of an ensemble is its members'
    mean), and the threshold, moved the same way, is returned."""
    records = [recorded_prevalence(info) for _, info in models.members]
    assumed = sum(record["assumed"] for record in records) / len(records)
    models.prevalence = {"assumed": assumed, "because": records[0]["because"], "target": target}
    return to_prevalence([threshold], models.prevalence)[0]


def describe(prevalence):
    """One line: the population the probabilities are for."""
    learnt = f"{prevalence['assumed']:.1%} malignant ({prevalence['because']})"
    if prevalence.get("target") is None:
        return (f"probabilities for a population {learnt}; --prevalence P gives them for another")
    return (f"probabilities for a population {prevalence['target']:.1%} malignant (--prevalence), "
            f"moved from the model's {learnt}")


# --- 3. The report --------------------------------------------------------------------------------

def ratio(numerator, denominator):
    return numerator / denominator if denominator else math.nan


def predictive_values(sensitivity, specificity, prevalence):
    """(PPV, NPV) in a population where this share is malignant: Bayes' rule on the two rates."""
    caught, missed = sensitivity * prevalence, (1 - sensitivity) * prevalence
    false_alarms, cleared = (1 - specificity) * (1 - prevalence), specificity * (1 - prevalence)
    return ratio(caught, caught + false_alarms), ratio(cleared, cleared + missed)


def report(labels, probabilities, metrics, prevalence, picture):
    """evaluate.py's report: print the calibration of these scored images, draw the reliability
    diagram to `picture`, and return what metrics.json gets."""
    bins = reliability_bins(labels, probabilities)
    intercept, slope = calibration_intercept_and_slope(labels, probabilities)
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    found = {"brier": brier_score(labels, probabilities),
             "ece": expected_calibration_error(bins),
             "ece_bins": f"{BINS} equal-width bins of the probability of malignancy",
             "reliability_bins": bins, "calibration_intercept": intercept,
             "calibration_slope": slope,
             "mean_probability": sum(probabilities) / len(probabilities),
             "observed_share": sum(labels) / len(labels), "npv": ratio(tn, tn + fn),
             "prevalence": dict(prevalence)}
    print(describe(prevalence))
    print(f"calibration: mean probability {found['mean_probability']:.3f} against "
          f"{found['observed_share']:.3f} malignant; Brier {found['brier']:.3f}; "
          f"ECE ({BINS} bins) {found['ece']:.3f}; intercept {intercept:.2f} (0 is right), "
          f"slope {slope:.2f} (1 is right)")
    print(f"these images: PPV {metrics['precision']:.3f}, NPV {found['npv']:.3f} at the threshold")
    if prevalence.get("target") is not None:
        ppv, npv = predictive_values(metrics["recall"], metrics["specificity"],
                                     prevalence["target"])
        found.update(ppv_at_prevalence=ppv, npv_at_prevalence=npv)
        print(f"at {prevalence['target']:.1%} malignant: PPV {ppv:.3f}, NPV {npv:.3f} "
              "(the same sensitivity and specificity, by Bayes' rule)")
    draw_reliability(bins, found, picture)
    return found
