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

from helpers.files import stop
from model import copy_of_weights, read_checkpoint


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


def parse(parser):
    """The command line; with --resume, the interrupted run's own arguments (except where this machine
    may differ), and its checkpoint (else None)."""
    args = parser.parse_args()
    if not args.resume:
        return args, None
    try:
        interrupted = read_checkpoint(args.resume)
    except ValueError as error:
        stop(error)
    return arguments_to_resume(args, interrupted, parser), interrupted


def training_state(run, history, best):
    """What a resumed run needs to carry on after this epoch, as the checkpoint holds it (run: train.py's Run)."""
    return {"model": copy_of_weights(run.network), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "random": random_state(run.train_loader.generator),
            "history": history, "best": {key: value for key, value in best.items() if key != "weights"}}


def random_state(generator):
    """Every random number generator that training draws from, so a resumed run draws the same numbers."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "loader": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore(interrupted, run):
    """Put the saved training state back into train.py's Run: weights, optimizer, schedule, random numbers,
    the history of the epochs done and the best so far."""
    state = interrupted["training_state"]
    run.network.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["random"]["torch"])
    random.setstate(state["random"]["python"])
    run.train_loader.generator.set_state(state["random"]["loader"])
    if state["random"]["cuda"]:
        torch.cuda.set_rng_state_all(state["random"]["cuda"])
    run.best, run.history = {**state["best"], "weights": interrupted["state_dict"]}, state["history"]
    arguments = interrupted["args"]
    print(f"resuming {arguments['out']} after epoch {len(state['history'])} of {arguments['epochs']}")


def stop_on_sigterm():
    """`kill`, a cluster's time limit or a shutdown stops training as Ctrl-C does: with a saved epoch."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


@contextmanager
def resumable(run, interrupted, out, write, previous=None):
    """Around one model's training (train.py's fit): with --resume, first the interrupted run's state put back
    into `run`; then it yields save(best, history, finished), which fit calls after every epoch and which
    writes, with write(best, history, training_state) (None in every process but the first), the checkpoint
    and, until the run is finished, the state to carry on from. Ctrl-C or SIGTERM then ends the run with what
    was saved and how to carry on (previous: the checkpoint to carry on from while nothing of this one is)."""
    if interrupted:
        restore(interrupted, run)
    saved = SimpleNamespace(epoch=len(run.history))

    def save(best, history, finished):
        if write:
            write(best, history, None if finished else training_state(run, history, best))
            saved.epoch = len(history)

    try:
        yield save
    except KeyboardInterrupt:
        say_how_to_resume(saved.epoch, out, previous)


def say_how_to_resume(saved_epoch, out, previous=None):
    """After Ctrl-C or SIGTERM: what was saved and the command that carries on; exit code 130, as a shell's."""
    saved = (f"epoch {saved_epoch} is saved; continue with: python train.py --resume {out}" if saved_epoch
             else f"the folds before are saved; continue with: python train.py --resume {previous}"
             if previous else "nothing saved yet")
    print(f"\ninterrupted; {saved}", flush=True)
    raise SystemExit(130) from None
