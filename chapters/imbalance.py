"""Class imbalance: when malignant lesions are rare, and how training answers it.

HAM10000 is 17 % malignant, ISIC 2024 one image in a thousand. A model that calls everything benign
is then 83 % or 99.9 % accurate and useless, and plain cross-entropy finds that answer cheap. There
are two ends to answer it at, and a run should use one of them:
- the sampling end (dataset.py, EpochSampler): --balanced-sampler draws each class equally often,
  and --neg-per-pos K feeds every malignant image with K times as many benign ones, drawn afresh
  each epoch;
- the loss end (here): --class-weights makes each malignant image count benign/malignant times as
  much in the loss, and --loss focal (any class balance) weighs the images already called right with
  confidence less, so that training dwells on the hard and the rare ones.
Not both: class weights are counted on the training table, so on batches a sampler has already
rebalanced they would scale the malignant class a second time (on ISIC 2024, --neg-per-pos 10 with
--class-weights would weigh each malignant image about 1,000 times a benign one, in batches that
are already 1 in 11 malignant). train.py refuses the pair (double_correction).
The metrics that judge the result (AUC, balanced accuracy, sensitivity) do not depend on the class
ratio.

Example (1,000 ISIC Archive images at the archive's own ratio, most of them benign: every malignant
image and 3 times as many benign ones an epoch; chapters/isic2024.py uses 10 for ISIC 2024):
  python train.py --data data/isic-1000 --neg-per-pos 3 --out checkpoints/isic-1000-k3.pt
"""
import torch

from helpers.files import number


def add_training_options(parser):
    add = parser.add_argument_group("class imbalance (chapters/imbalance.py)").add_argument
    add("--loss", choices=("cross-entropy", "focal"), default="cross-entropy",
        help="focal: cross-entropy that weighs the images the model already gets right less")
    add("--class-weights", action="store_true",
        help="weight the loss by inverse class frequency (not with --balanced-sampler or "
             "--neg-per-pos, which rebalance already)")
    add("--balanced-sampler", action="store_true", help="draw each class equally often")
    add("--neg-per-pos", type=number(int, 1), default=None, metavar="K",
        help="each epoch, every malignant image and K times as many benign ones, drawn afresh "
             "(for ISIC 2024's 1:1000)")


def refuse_conflicts(args, parser):
    """Two answers to the imbalance at once stop the run (exit 2) with what to do instead."""
    if args.balanced_sampler and args.neg_per_pos:
        parser.exit(2, "error: choose one of --balanced-sampler and --neg-per-pos\n")
    sampler = double_correction(args)
    if sampler:  # the loss would weigh the malignant class up again on batches already rebalanced
        parser.exit(2, f"error: --class-weights with {sampler} corrects the class imbalance "
                       "twice; choose one: the sampler (rebalanced batches) or the weights "
                       "(plain batches)\n")


def class_weights(train_labels, device):
    """Each class's weight in the loss: total / (2 x its count), so that both classes weigh the same
    in all."""
    counts = torch.bincount(train_labels, minlength=2).float()
    return (counts.sum() / (2 * counts.clamp(min=1))).to(device)


def focal_loss(logits, labels, weight=None, gamma=2.0):
    """Cross-entropy with each image's term scaled by (1 - p)^gamma, p the probability of its
    true class.

    Focal loss (Lin et al., ICCV 2017): images the model already gets right with confidence
    (p near 1) add almost nothing, so training concentrates on the hard and the rare ones.
    gamma=0 is cross-entropy.
    """
    log_p = logits.float().log_softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
    losses = -(1 - log_p.exp()) ** gamma * log_p
    if weight is None:
        return losses.mean()
    # Weighted mean, as CrossEntropyLoss does.
    return (weight[labels] * losses).sum() / weight[labels].sum()


def double_correction(args):
    """The rebalancing sampler asked for beside --class-weights, if any (train.py then refuses the
    pair): one end of the imbalance is enough."""
    if args.class_weights:
        for option, asked in (("--balanced-sampler", args.balanced_sampler),
                              ("--neg-per-pos", args.neg_per_pos)):
            if asked:
                return option
    return None
