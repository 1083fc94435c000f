"""A run's outcome from its device-side records: the first failure event among the steps checked
(``first_event``), and the paper's criterion beside it (``paper_outcome``). The outcomes and their
meaning: ``stabkit.train.loop``'s module doc. An eigensolver failure arrives as
:class:`stabkit.errors.EigensolverError` (raised by the ZCA layer where the solver failed) and is
recognised by its type."""

from __future__ import annotations

import torch

from ..errors import EigensolverError

OUTCOMES = ("ok", "eigh-failed", "nonfinite-loss", "nonfinite-grad", "diverged")


def is_eigen_failure(exc: BaseException) -> bool:
    """Whether a step's exception is the eigensolver's failure (a training outcome, not a bug)."""
    return isinstance(exc, EigensolverError)


def first_event(losses, gnorms, correct, upto, cfg, chance_step, window_images):
    """(outcome, step) of the first failure among steps < upto, or None. ``window_images``: the
    training images in the chance window's steps (an epoch's last batch may be partial)."""
    loss, gn = losses[:upto], gnorms[:upto]
    bad_loss = ~torch.isfinite(loss)
    big_loss = torch.isfinite(loss) & (loss > cfg["diverge_loss"])
    bad_grad = ~torch.isfinite(gn)
    events = []
    for outcome, mask in (("nonfinite-loss", bad_loss), ("diverged", big_loss), ("nonfinite-grad", bad_grad)):
        idx = torch.nonzero(mask)
        if len(idx):
            events.append((int(idx[0]), OUTCOMES.index(outcome), outcome))
    if chance_step is not None and upto > chance_step:
        window = correct[max(0, chance_step - 49):chance_step + 1]
        if float(window.sum()) / window_images <= cfg["chance_acc"]:
            events.append((chance_step, 99, "diverged"))
    if not events:
        return None
    step, _, outcome = min(events)
    return outcome, step



def inferred_nan_loss(weights_finite: bool, records, step: int) -> str:
    """The note of a NaN loss inferred at ``step``, where the eigensolver raised ("" if none is): it raised
    on a non-finite covariance, where the authors' torch.svd returned NaN and their loss was NaN — from
    non-finite weights (an earlier step's NaN gradient), or from finite weights whose float covariance
    overflowed (the monitor's row of the failed call, ``records``, says its input was not finite)."""
    if not weights_finite:
        return "inferred: eigensolver raised on non-finite weights"
    failed = records[(records["step"] == step) & (records["error"] != "")] if len(records) else records
    return "inferred: eigensolver raised on a non-finite covariance of finite weights" if \
        len(failed) and bool(failed["input_nonfinite"].any()) else ""


def paper_outcome(nan_loss_step, eigen_error: bool, done: int, total: int) -> str:
    """The paper's criterion: ``nan-loss``, ``eigh-failed``, ``ok`` (the whole horizon without a NaN
    loss) or ``censored`` (stopped by another outcome before the horizon without a NaN loss)."""
    if nan_loss_step is not None:
        return "nan-loss"
    if eigen_error:
        return "eigh-failed"
    return "ok" if done == total else "censored"
