"""The metadata: age, sex and body site weighed beside the pixels (late fusion).

A dermatologist reads more than the picture: a new mole at 70 is not a new mole at 25, and melanoma
favours some parts of the body over others. Every collection ships such facts in its metadata CSV,
each under its own column names and words. This chapter follows them from the CSV to
the probability:
1. evidence (prepare_data.py, read_evidence): the columns that are evidence, cleaned into
   one vocabulary;
2. numbers (metadata_features): age in years, each word as a 0/1 column, NaN where unknown;
3. the fusion (LateFusion): the metadata's log-odds added to the image model's, Bayes' rule;
4. its fit (add_late_fusion, which train.py's fuse_metadata calls): a logistic regression by hand,
   once the image model is trained, and a picture of what it learnt;
5. its use (evaluate.py, apply and note): every image scored is fused, and the report says
   with what;
6. priors that may not travel (metadata_shift): a warning when the scored metadata is unlike the
   training set's, and a clinic's own refit (evaluate.py --threshold-from DATA --refit-fusion:
   refit_for_clinic).
Its options: train.py --no-metadata; evaluate.py --refit-fusion, and --age, --sex, --site with
--image.
ISIC 2024's lesion measurements come along as numbers too (chapters/isic2024.py).
"""
import argparse
import math

import pandas as pd
import torch
from torch import nn

from chapters import isic2024
from helpers.charts import draw_odds

def add_training_options(parser):
    parser = parser.add_argument_group("the metadata (chapters/metadata.py)")
    parser.add_argument("--metadata", action=argparse.BooleanOptionalAction, default=True,
                        help="weigh each image's age, sex and body site (where labels.csv has "
                             "them) beside the image model: a logistic regression on them, its "
                             "log-odds added to the image's")


def add_evaluation_options(parser):
    add = parser.add_argument_group("the metadata (chapters/metadata.py)").add_argument
    add("--age", default=None, help="with --image: the patient's age in years, if known")
    add("--sex", default=None, help="with --image: female or male, if known")
    sites = ", ".join(sorted(set(SITES.values())))
    add("--site", default=None,
        help=f"with --image: the body site, in the ISIC Archive's words ({sites}) or HAM10000's, "
             "if known")
    add("--refit-fusion", action="store_true",
        help="with --threshold-from: refit the metadata's fusion on those images too (the bias, "
             "and each weight held near its trained value), for a clinic whose population "
             "differs from the training one")


def refuse_conflicts(args, parser):
    if args.refit_fusion and not args.threshold_from:
        parser.error("--refit-fusion needs --threshold-from DATA, the labelled images to refit on")


# --- 1. Evidence: the columns that may be read, in one vocabulary ---------------------------------
# Evidence is what is known when the lesion is photographed, before anyone has diagnosed it. These
# are the only columns ever read as features; everything else in a CSV is ignored. In particular,
# columns that record the diagnosis, how it was confirmed, or anything known only after it would
# hand the model the answer (a "leak"): its scores would look superb and mean nothing on a new
# patient. They are:
#   HAM10000 dx, dx_type;
#   ISIC Archive diagnosis*, diagnosis_confirm_type, benign_malignant, melanocytic;
#   ISIC 2024 target, lesion_id, iddx_*, mel_mitotic_index,
#     mel_thick_mm, tbp_lv_dnn_lesion_confidence.
AGE_COLUMNS = ("age_approx", "age")  # ISIC Archive and 2024, HAM10000
SITE_COLUMNS = ("anatom_site_general", "anatom_site_general_challenge",
                "localization")      # new, old, HAM

# Body sites, in the ISIC Archive's words (anatom_site_general), from every spelling met. "torso" is
# the older exports' word for a torso whose side is not recorded; HAM10000 says "trunk" for it.
SITES = {word: word for word in ("head/neck", "upper extremity", "lower extremity",
                                 "anterior torso", "posterior torso", "lateral torso", "torso",
                                 "palms/soles", "oral/genital")}
SITES.update({"scalp": "head/neck", "face": "head/neck", "ear": "head/neck", "neck": "head/neck",
              "chest": "anterior torso", "abdomen": "anterior torso", "back": "posterior torso",
              "trunk": "torso", "hand": "upper extremity", "foot": "lower extremity",
              "acral": "palms/soles", "genital": "oral/genital"})
SEXES = {"female": "female", "f": "female", "male": "male", "m": "male"}


def clean_age(values):
    """Ages as numbers; empty, 'NA', 'unknown' and impossible ages (below 0, over 120)
    become missing."""
    ages = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    return ages.where(ages.between(0, 120))


def clean_word(values, vocabulary):
    """Each text in the vocabulary's own word (case and spaces ignored); any other text
    becomes missing."""
    return pd.Series(values, dtype=object).map(
        lambda text: vocabulary.get(str(text).strip().lower()))


def read_evidence(meta):
    """The evidence columns of a metadata CSV (its text), cleaned: {age, sex, site,
    measurements: values}."""
    found = {}
    age = next((column for column in AGE_COLUMNS if column in meta), None)
    site = next((column for column in SITE_COLUMNS if column in meta), None)
    if age:
        found["age"] = clean_age(meta[age]).to_numpy()
    if "sex" in meta:
        found["sex"] = clean_word(meta["sex"], SEXES).to_numpy()
    if site:
        found["site"] = clean_word(meta[site], SITES).to_numpy()
    return {**found, **isic2024.measurements(meta)}


def evidence_columns(table):
    """The evidence columns a table holds: those read_evidence wrote."""
    return [column for column in table.columns
            if column in ("age", "sex", "site") or isic2024.is_measurement(column)]


def report_missing_evidence(table):
    """One line: which evidence the images carry, and how much of it is missing."""
    columns = evidence_columns(table)
    if not columns:
        print("metadata: none (no age, sex or body site in this data)")
        return
    shown = [f"{column} {int(table[column].isna().sum())}" for column in columns[:6]]
    more = f", and {len(columns) - 6} more measurements" if len(columns) > 6 else ""
    print(f"metadata missing, of {len(table)} images: {', '.join(shown)}{more}")


def from_command_line(age=None, sex=None, site=None):
    """evaluate.py --image's --age, --sex and --site, cleaned as a CSV's are (a note for each
    not understood)."""
    given = {"age": (age, clean_age([age])), "sex": (sex, clean_word([sex], SEXES)),
             "site": (site, clean_word([site], SITES))}
    for name, (text, cleaned) in given.items():
        if text is not None and pd.isna(cleaned[0]):
            print(f"note: --{name} {text!r} is not a value the models know; scored as unknown")
    return {name: cleaned for name, (_, cleaned) in given.items()}


# --- 2. As numbers --------------------------------------------------------------------------------
# A model weighs numbers, so a number stays a number (age in years) and a word becomes one column
# per word of the vocabulary, 1 where it applies and 0 elsewhere ("one-hot"). Whatever is unknown is
# NaN, which the fusion reads as "no evidence either way". A torso site also lights a "torso"
# column, so that an older export's plain "torso" shares what the sides teach.
WORD_COLUMNS = ("sex", "site")


def metadata_encoding(table):
    """Which features the metadata of these (training) images gives: every evidence column with at
    least one value, each word column spelled out as one feature per word seen. None when there is
    no metadata."""
    features, vocabulary = [], {}
    patient = isic2024.patients(table)
    # Someone to compare a lesion with.
    several_lesions = patient is not None and patient.duplicated().any()
    for column in evidence_columns(table):
        values = table[column].dropna()
        if values.empty:
            continue
        if column in WORD_COLUMNS:
            words = {word for value in values for word in words_of(value)}
            vocabulary[column] = sorted(words)
            features += [f"{column}: {word}" for word in vocabulary[column]]
        else:
            features.append(column)
            if column != "age" and several_lesions:
                features.append(column + isic2024.VS_PATIENT)
    return {"features": features, "vocabulary": vocabulary} if features else None


def metadata_fields(encoding):
    """The metadata columns an encoding reads (its features' sources): age, sex, site ..."""
    return list(dict.fromkeys(feature.removesuffix(isic2024.VS_PATIENT).split(": ")[0]
                              for feature in encoding["features"]))


def words_of(value):
    """The one-hot columns a word lights: itself, and "torso" for a torso of any side."""
    return {value, "torso"} if str(value).endswith("torso") else {value}


def metadata_features(table, encoding):
    """An (images x features) float tensor of the encoding's features for each row of the table, NaN
    where a value is missing, the column is absent, or a word was never seen in training."""
    columns = []
    for feature in encoding["features"]:
        column, _, word = feature.removesuffix(isic2024.VS_PATIENT).partition(": ")
        values = table[column] if column in table else pd.Series(math.nan, index=table.index)
        if feature.endswith(isic2024.VS_PATIENT):
            patient = isic2024.patients(table)
            columns.append(isic2024.relative_to_patient(values, patient) if patient is not None
                           else [math.nan] * len(table))
        elif word:  # one-hot: 1 where the word applies, 0 where another known word does, else NaN
            known = set(encoding["vocabulary"][column])
            columns.append([math.nan if not isinstance(value, str) or value not in known
                            else float(word in words_of(value)) for value in values])
        else:
            columns.append(pd.to_numeric(values, errors="coerce").astype(float).tolist())
    matrix = torch.tensor(columns, dtype=torch.float32).T
    return matrix.reshape(len(table), len(encoding["features"]))


# --- 3. Late fusion: the two pieces of evidence added up ------------------------------------------
# The image model gives each lesion a probability; its metadata is evidence the model never saw.
# Late fusion adds the two up as log-odds (the logarithm of p / (1 - p)):
#     log-odds = (the image model's log-odds) + sum of weight_i * feature_i + bias
# which is Bayes' rule when the image and the metadata are independent evidence of the diagnosis
# (each multiplies the odds by its own factor, and adding log-odds is multiplying odds). Each
# feature is first centred (minus its mean over the train and val images) and a number also scaled
# (divided by its standard deviation), so that a weight says what one word, or one standard
# deviation of age, does to the log-odds; a missing feature is then 0, the average, and moves
# nothing. So a collection with no body site, or no metadata at all, still scores.

class LateFusion(nn.Module):
    """P(malignant) from the image model's P(malignant) and the metadata features
    (NaN = missing)."""

    def __init__(self, fusion):
        super().__init__()
        for name in ("centre", "scale", "weights"):
            self.register_buffer(name, torch.tensor(fusion[name], dtype=torch.float32))
        self.bias = float(fusion["bias"])

    def forward(self, image_probability, features):
        image_log_odds = torch.logit(image_probability.float().clamp(1e-6, 1 - 1e-6))
        standardised = standardise(features, self.centre, self.scale)
        return torch.sigmoid(image_log_odds + standardised @ self.weights + self.bias)


def standardise(features, centre, scale):
    """Features centred and scaled; a missing one (NaN) becomes 0, the average."""
    standardised = (features - centre) / scale
    return torch.where(torch.isnan(standardised), torch.zeros_like(standardised), standardised)


def nan_std(features):
    """Each column's standard deviation over its known values."""
    return ((features - features.nanmean(0)) ** 2).nanmean(0).sqrt()


# --- 4. Its fit, once the image model is trained --------------------------------------------------
# Two steps:
#   1. the metadata's weights: a logistic regression on the metadata alone, fitted on every labelled
#      image (train and val: the metadata model has no pixels to memorise, and needs all
#      the labels);
#   2. the bias, which sets the sum's scale of probabilities right, on held-out images, ones the
#      image model never trained on: the val split, or with --folds every train and val image, each
#      scored by the fold's model that never saw it (on its own training images the image model
#      is overconfident).
# Fitting the image's weight and the metadata's together on the held-out images alone asks too much
# of the 60 validation images one model has: on the HAM10000 development lesions under the budget,
# seed 0 of the default model scores AUC 0.853 this way, 0.809 that way and 0.824 from its images
# alone (docs/RESULTS.md).

# How firmly each metadata weight is held at 0 while it is fitted (see logistic_regression). On the
# HAM10000 development lesions under the budget, anything from 0.1 to 3 gives the same AUC to 0.002
# (python benchmarks/fusion_strength.py; docs/RESULTS.md).
FUSION_STRENGTH = 1.0
# The words (sex, body site) are held 100 times harder. Which site carries melanoma is a fact about
# one population and one way of recording sites, and a few hundred images of it mislead a clinic
# where either differs. On HAM10000 development lesions redrawn so that the sites carry melanoma in
# the reverse order, words held as age's scored below the images alone, and held 100 times harder
# above them, within 0.003 of the best in-domain (python benchmarks/fusion_shift.py;
# docs/RESULTS.md). The penalty is a sum beside the data's: with 400 images a word must prove a
# lot, with ISIC 2024's 400,000 it hardly holds.
WORD_STRENGTH = 100.0


def logistic_regression(inputs, labels, prior, strength, offset=None, steps=50):
    """The weights (bias first) that minimise the summed cross-entropy of
    sigmoid(offset + bias + inputs @ weights) plus strength[i]/2 times the squared distance of
    weight i from its prior: Newton's method, by hand. `offset`, if given, is where each image's
    log-odds start (the fusion's image model).

    The penalty keeps a few dozen images from fitting noise: a weight moves from its prior only as
    far as the evidence pushes it. The loss is convex, so each Newton step (the gradient divided by
    the curvature) heads for its one minimum, reached to rounding in a few steps."""
    x = torch.cat([torch.ones(len(inputs), 1), inputs], dim=1).double()
    y, prior, penalty = labels.double(), prior.double(), torch.diag(strength.double())
    start = torch.zeros(len(x), dtype=torch.float64) if offset is None else offset.double()
    weights = prior.clone()
    for _ in range(steps):
        p = torch.sigmoid(start + x @ weights)
        gradient = x.T @ (p - y) + penalty @ (weights - prior)
        curvature = x.T @ (x * (p * (1 - p))[:, None]) + penalty
        step = torch.linalg.solve(curvature, gradient)
        weights -= step
        if step.abs().max() < 1e-10:
            break
    return weights.float()


def fit_late_fusion(checkpoint, table, strength=FUSION_STRENGTH, word_strength=WORD_STRENGTH):
    """A LateFusion, as the dict the checkpoint carries (its metadata weights fitted on every train
    and val image of the table, labels.csv's rows; its bias on the checkpoint's held-out
    predictions), and the held-out images' fused probabilities: (None, None) when the data has
    no metadata. strength holds the numbers' weights (age, measurements), word_strength the word
    columns' (sex, site)."""
    labelled = table[table["split"].isin(["train", "val"])]
    encoding = metadata_encoding(labelled)
    if encoding is None:
        return None, None
    features = metadata_features(labelled, encoding)
    # A number is measured in standard deviations; a 0/1 word column keeps its scale, so that its
    # weight is what that word does to the log-odds: standardised, a word seen twice would stretch
    # to +-10 and its weight slip past the penalty.
    words = torch.tensor([": " in feature for feature in encoding["features"]])
    centre = features.nanmean(0)
    scale = torch.where(words, torch.ones_like(centre), nan_std(features).clamp(min=1e-6))
    # 1. The metadata alone: every weight pulled towards 0 (no evidence), the bias free (1e-6).
    held = [word_strength if word else strength for word in words.tolist()]
    labels = torch.tensor(labelled["label"].values)
    weights = logistic_regression(standardise(features, centre, scale), labels,
                                  torch.zeros(len(held) + 1), torch.tensor([1e-6] + held))[1:]
    # 2. The bias, on the held-out images: each starts from the image model's log-odds plus the
    # metadata's, and only the shift of that sum is fitted.
    held_out = checkpoint["val_predictions"]
    image_alone = held_out["image_probability"]
    rows = rows_of(table, held_out["isic_id"])
    summed = torch.logit(torch.tensor(image_alone).clamp(1e-6, 1 - 1e-6)) + standardise(
        metadata_features(rows, encoding), centre, scale) @ weights
    bias = logistic_regression(torch.zeros(len(rows), 0), torch.tensor(held_out["label"]),
                               torch.zeros(1), torch.tensor([1e-6]), offset=summed)[0]
    fusion = {**encoding, "centre": centre.tolist(), "scale": scale.tolist(),
              "weights": weights.tolist(), "bias": bias.item(), "fitted_on": len(labelled),
              "bias_fitted_on": len(rows)}
    # As evaluate.py will fuse every image it scores.
    return fusion, fused_probabilities(fusion, image_alone, rows)


def rows_of(table, isic_ids):
    """The table's rows for these images, in this order."""
    return table.set_index("isic_id").loc[list(isic_ids)].reset_index()


def add_late_fusion(checkpoint, table, picture):
    """train.py, once the image model is trained: the fusion fitted on the checkpoint's contents and
    added to it, with the held-out images' fused probabilities beside the image model's
    (val_predictions' fused_probability, on which evaluate.py chooses its threshold: what it will
    score), and a picture of what it learnt. None, with a note, when the data has no metadata."""
    fusion, fused = fit_late_fusion(checkpoint, table)
    if fusion is None:
        print("no metadata (age, sex, body site) in the training data: "
              "the image model decides alone")
        return None
    checkpoint["val_predictions"]["fused_probability"] = fused
    checkpoint["fusion"] = fusion
    draw_odds(metadata_odds(fusion), "what the metadata does to the odds of malignancy", picture)
    return fusion


def metadata_odds(fusion):
    """What the fusion learnt, as (value, factor) pairs: how many times the odds of malignancy grow
    (or shrink, below 1) when the image's age, sex or site is this value rather than unknown."""
    def odds(**values):
        p = fused_probabilities(fusion, [0.5], pd.DataFrame([values]))[0]
        return p / (1 - p)

    unknown, factors = odds(), []
    if "age" in fusion["features"]:
        factors += [(f"age {age}", odds(age=age) / unknown) for age in (20, 35, 50, 65, 80)]
    for column, words in fusion["vocabulary"].items():
        factors += [(word, odds(**{column: word}) / unknown) for word in words]
    return factors


# --- 5. Its use, on every image scored ------------------------------------------------------------

def fused_probabilities(fusion, image_probabilities, table):
    """The fusion's P(malignant) for each row of the table, from the image model's."""
    with torch.inference_mode():
        return LateFusion(fusion)(torch.tensor(image_probabilities),
                                  metadata_features(table, fusion)).tolist()


def apply(fusion, image_probabilities, table):
    """evaluate.py: the probabilities with the metadata weighed in, or as they are for a model
    without it."""
    return (fused_probabilities(fusion, image_probabilities, table) if fusion
            else image_probabilities)


def note(fusions, table):
    """One line: which metadata the models weigh (their fusions, None for none), and how much this
    data has."""
    fusion = next((fusion for fusion in fusions if fusion), None)
    if fusion is None:
        return "metadata: not used (the models were trained without it)"
    fields = metadata_fields(fusion)
    present = [field for field in fields if field in table and table[field].notna().any()]
    if not present:
        return (f"note: this data has no {', '.join(fields)}; the models score it from the images, "
                "as if that metadata were unknown")
    known = [f"{field} (known for {int(table[field].notna().sum())} of {len(table)})"
             for field in present]
    absent = [field for field in fields if field not in present]
    unlearnt = [column for column in evidence_columns(table)
                if column not in fields and table[column].notna().any()]
    shifted = metadata_shift(fusion, table)
    warning = (f"warning: this metadata is unlike the training set's ({'; '.join(shifted)}): "
               "the fusion's priors may not hold here; compare the AUC of the images alone\n"
               if shifted else "")
    ignored = f"; never in the training data, so ignored: {', '.join(unlearnt)}" if unlearnt else ""
    return (f"{warning}metadata used: {', '.join(known)}" +
            (f"; not in this data, so unknown: {', '.join(absent)}" if absent else "") + ignored)


# --- 6. Priors that may not travel ---------------------------------------------------------------
# The weights are one population's priors: which sites, which sex and which ages carry melanoma
# among the training images. Another clinic, another country or another way of recording the site
# sees other frequencies, and the same words then mislead. The scored data cannot say whether the
# priors hold (it has no labels), but it can say when its metadata looks unlike the training set's.
SHIFTED_SHARE = 0.2  # a word this much more or less common, of the known values, than in training
SHIFTED_MEAN = 1.0   # a number whose mean lies this many training standard deviations away


def metadata_shift(fusion, table):
    """The features whose values here lie far from the training set's (the fusion's centre: each
    word's share, each number's mean), each as 'feature: here against training', and the words
    common here that training never saw (scored as unknown)."""
    here = metadata_features(table, fusion).nanmean(0).tolist()
    shifted = []
    for name, mean, centre, scale in zip(fusion["features"], here, fusion["centre"],
                                         fusion["scale"]):
        if math.isnan(mean) or name.endswith(isic2024.VS_PATIENT):
            continue
        if ": " in name and abs(mean - centre) >= SHIFTED_SHARE:
            shifted.append(f"{name} {mean:.0%} of the known values against {centre:.0%}")
        elif ": " not in name and abs(mean - centre) >= SHIFTED_MEAN * scale:
            shifted.append(f"{name} {mean:.3g} on average against {centre:.3g}")
    for column, vocabulary in fusion["vocabulary"].items():
        words = set({"sex": SEXES, "site": SITES}[column].values())
        known = table[column][table[column].isin(words)] if column in table else pd.Series()
        for word, share in known[~known.isin(vocabulary)].value_counts().items():
            if share / len(known) >= SHIFTED_SHARE:
                shifted.append(f"{column}: {word} {share / len(known):.0%} of the known values, "
                               "never seen in training")
    return shifted


# A clinic that has a few dozen labelled images of its own can refit the fusion on them: the bias
# (its population's base rate), and each weight pulled towards the one learnt in training, so that
# a few dozen images move it only as far as their evidence goes (evaluate.py --refit-fusion, with
# --threshold-from; benchmarks/fusion_shift.py measures how many labels it takes).
LOCAL_STRENGTH = 10.0


def refit_fusion(fusion, image_probabilities, table, labels, strength=LOCAL_STRENGTH):
    """The fusion refitted on these labelled images (their image-alone probabilities, metadata and
    labels): the bias free, each weight held at its trained value by `strength`."""
    features = standardise(metadata_features(table, fusion), torch.tensor(fusion["centre"]),
                           torch.tensor(fusion["scale"]))
    offset = torch.logit(torch.tensor(image_probabilities).clamp(1e-6, 1 - 1e-6))
    prior = torch.tensor([fusion["bias"], *fusion["weights"]])
    held = torch.tensor([1e-6] + [strength] * len(fusion["weights"]))
    refitted = logistic_regression(features, torch.tensor(list(labels)), prior, held, offset=offset)
    return {**fusion, "bias": refitted[0].item(), "weights": refitted[1:].tolist(),
            "refitted_on": len(table)}


def refit_for_clinic(members, table, image_probabilities, labels):
    """evaluate.py --refit-fusion: each model's fusion (members: (model, checkpoint entries) pairs)
    refitted in place on a clinic's labelled images, from their image-alone probabilities (an
    ensemble's mean): every image scored after this is fused with the clinic's priors."""
    for _, info in members:
        if info.get("fusion"):
            info["fusion"] = refit_fusion(info["fusion"], image_probabilities, table, labels)
