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
The metrics that judge the result (AUC, balanced accuracy, sensitivity; chapters/metrics.py) do not
depend on the class ratio.
"""
import torch


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
