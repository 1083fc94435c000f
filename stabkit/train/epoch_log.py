"""The per-epoch log of a run (issue 12; fields: ``stabkit.train.loop``'s module doc): losses,
conv1's weight norm and λ_max read back once, at the end, and the monitor's records of the first
ZCA layer summarised per epoch."""

from __future__ import annotations

import json
import math

import numpy as np


def _zca_site(records):
    """Records of the first ZCA layer: the call site of the first logged call."""
    return records[records["site"] == records["site"].iloc[0]] if len(records) else records


def _num(value):
    value = float(value)
    return None if math.isnan(value) else value


def epoch_log(run, records, done: int, stopped: bool) -> list[dict]:
    """One dict per epoch of steps [0, done) (the last one partial at a stop): see ``schema12``
    in the module doc. ``stopped``: the run ended early in a way that makes its last test pass
    untrustworthy (a failure, or a stop whose weights may be non-finite), so that pass is dropped; a
    clean deadline stop at an epoch's end keeps it. Losses, norms and λ_max are read back once, here."""
    per_epoch = run.per_epoch
    losses = run.losses[:done].double().cpu().numpy()
    norms = run.conv1_norms[:done].double().cpu().numpy()
    lam_max = run.lam_max[:done].cpu().numpy()
    zca = run.spec is not None
    site = _zca_site(records) if zca else None
    eps = float(run.cfg["eps"]) if zca else None
    out = []
    for epoch in range(1, -(-done // per_epoch) + 1):
        a, b = (epoch - 1) * per_epoch, min(epoch * per_epoch, done)
        finite = losses[a:b][np.isfinite(losses[a:b])]
        last = b == done
        wrong = run.evals.get(epoch)
        acc = None if wrong is None or (last and stopped) else 1.0 - float(wrong) / max(1, len(run.test_x))
        entry = {"epoch": epoch, "step": b, "train_loss": float(finite.mean()) if len(finite) else None, "test_acc": acc,
                 "conv1_weight_norm": _num(norms[b - 1])}
        diag = dict.fromkeys(("lam_max_over_eps", "lam_min", "min_rel_gap", "max_abs_K", "grad_norm_max", "nonfinite_events"))
        if zca:
            rows = site[(site["step"] >= a) & (site["step"] < b)]
            window = lam_max[a:b]
            if len(rows):
                diag.update(lam_min=_num(rows["lam_min"].min()), min_rel_gap=_num(rows["min_rel_gap"].min()),
                            max_abs_K=_num(rows["max_K"].max()), grad_norm_max=_num(rows["grad_norm"].max()),
                            nonfinite_events=int(rows["nonfinite"].sum()))
            if len(window) and not np.isnan(window).all():
                diag["lam_max_over_eps"] = float(np.nanmax(window)) / eps if eps > 0 else float("inf")
        out.append({**entry, **diag})
    return out


def epoch_log_json(log: list[dict]) -> str:
    """The epoch log as JSON text (the results column); ±inf as Python's json writes them (Infinity)."""
    return json.dumps(log)

