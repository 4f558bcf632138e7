"""Carrying on after Ctrl-C, a kill or a crash (train.py --resume CKPT); a first reading can skip it.

train.py saves, after every epoch, the state to carry on from: weights, optimizer, schedule, the history
so far and every random number generator. With the same state and the same random numbers, a resumed
run trains exactly as an uninterrupted one would (with --workers 0: worker processes keep their own
random state, which is not saved).
"""
import argparse
import random
import signal
from contextlib import contextmanager
from types import SimpleNamespace

import torch


def arguments_to_resume(args, interrupted, parser):
    """The interrupted run's arguments, except where this machine may differ (device; workers if given).
    `interrupted` is the run's checkpoint; a finished run has nothing to resume (exit 2), unless it is one
    fold of a cross-validated run (train.py --folds), which then carries on with the next fold."""
    if "training_state" not in interrupted and "fold" not in interrupted:
        parser.exit(2, f"error: the run in {args.resume} finished (best epoch {interrupted['epoch']}); "
                       "nothing to resume\n")
    workers = interrupted["args"]["workers"] if args.workers is None else args.workers
    defaults = vars(parser.parse_args([]))  # for options added since that run
    return argparse.Namespace(**{**defaults, **interrupted["args"], "resume": args.resume, "device": args.device,
                                 "workers": workers})


def fold_path(out, fold):
    """Where one fold's model is saved while a cross-validated run goes on (the run's own path if no folds)."""
    return out.with_name(f"{out.stem}-fold{fold}{out.suffix}") if fold else out


def folds_to_train(interrupted, folds):
    """(fold, the interrupted state to carry on in that fold, or None) for each model still to train:
    fold None for a run without --folds; with --folds K, the folds from the one --resume stopped in (or,
    if that fold had finished, the next) to K."""
    if folds == 1:
        return [(None, interrupted)]
    if interrupted is None:
        return [(fold, None) for fold in range(1, folds + 1)]
    mid_fold = "training_state" in interrupted  # else that fold finished, and the next starts afresh
    first = interrupted["fold"] if mid_fold else interrupted["fold"] + 1
    return [(fold, interrupted if mid_fold and fold == first else None) for fold in range(first, folds + 1)]


def training_state(weights, run, history, best):
    """What a resumed run needs to carry on after this epoch, as the checkpoint holds it (run: train.py's Run)."""
    return {"model": weights, "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "random": random_state(run.train_loader.generator), "history": history,
            "best": {key: value for key, value in best.items() if key != "weights"}}


def random_state(generator):
    """Every random number generator that training draws from, so a resumed run draws the same numbers."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "loader": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore(interrupted, run):
    """Put the saved training state back into train.py's Run (weights, optimizer, schedule, random numbers);
    returns the best epoch so far and the history of the epochs done."""
    state = interrupted["training_state"]
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["random"]["torch"])
    random.setstate(state["random"]["python"])
    run.train_loader.generator.set_state(state["random"]["loader"])
    if state["random"]["cuda"]:
        torch.cuda.set_rng_state_all(state["random"]["cuda"])
    run = interrupted["args"]
    print(f"resuming {run['out']} after epoch {len(state['history'])} of {run['epochs']}")
    return {**state["best"], "weights": interrupted["state_dict"]}, state["history"]


def stop_on_sigterm():
    """`kill`, a cluster's time limit or a shutdown stops training as Ctrl-C does: with a saved epoch."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


@contextmanager
def on_interrupt(out, fold, saved_epoch=0):
    """Around the epoch loop: Ctrl-C or SIGTERM ends the run with what was saved and how to carry on.
    The loop sets `.epoch` of what this yields each time it saves an epoch."""
    saved = SimpleNamespace(epoch=saved_epoch)
    try:
        yield saved
    except KeyboardInterrupt:
        say_how_to_resume(saved.epoch, out, fold)


def say_how_to_resume(saved_epoch, out, fold=None):
    """After Ctrl-C or SIGTERM: what was saved and the command that carries on; exit code 130, as a shell's.
    In a cross-validated run that saved nothing of this fold yet, the previous fold's checkpoint carries on."""
    checkpoint, previous_fold = fold_path(out, fold), fold_path(out, fold - 1) if fold and fold > 1 else None
    saved = (f"epoch {saved_epoch} is saved; continue with: python train.py --resume {checkpoint}" if saved_epoch
             else f"the folds before are saved; continue with: python train.py --resume {previous_fold}"
             if previous_fold else "nothing saved yet")
    print(f"\ninterrupted; {saved}", flush=True)
    raise SystemExit(130) from None
