"""Checks shared by the training tests (imported as ``from _checks import ...``; pytest puts tests/ on the path)."""

from __future__ import annotations

import json
import os

import torch

from unidm.train.checkpoint import param_digest


def same_checkpoints(a, b) -> None:
    """Bitwise-equal weights, EMA, optimizer tensors (and rank digests, when both hold them) of two checkpoints."""
    assert a.step == b.step
    assert param_digest(a.model) == param_digest(b.model)
    assert param_digest(a.ema) == param_digest(b.ema)
    if "param_digests" in a.extra and "param_digests" in b.extra:
        assert a.extra["param_digests"] == b.extra["param_digests"]
    sa, sb = a.optimizer["state"], b.optimizer["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)


def logged_losses(run_dir: str) -> list[tuple[int, float]]:
    """``(step, loss)`` of every line of a run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]
