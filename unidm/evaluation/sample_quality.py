"""Quality of a trained run's samples against held-out data, with noise floors (``unidm eval``)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .metrics import compare

__all__ = ["evaluate_samples", "EVALUATORS", "reference_set"]


def reference_set(data, n: int, seed: int = 12345) -> Tensor:
    """An independent real set of ``n`` points for the noise floor: a fresh draw where the dataset can make one
    (toys, mixtures), else a subsample of the training split."""
    if "resample" in data.meta:
        return data.meta["resample"](n, seed)
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n]
    return data.train[idx]


def evaluate_vectors(samples: Tensor, data) -> dict:
    """Sliced W2, MMD and energy distance vs held-out data with floors; for analytic mixtures also the
    cross-entropy ``-E_samples log p(x)`` under the true density next to the true entropy."""
    test = data.test[: len(samples)].float()
    samples = samples[: len(test)].float().cpu()
    refs = [reference_set(data, len(test), seed=12345 + i) for i in range(3 if "resample" in data.meta else 1)]
    out = {"n": len(samples), "metrics": compare(samples, test, refs)}
    oracle = data.meta.get("oracle")
    if oracle is not None:
        ce = float(-oracle.log_prob(samples.double()).mean())
        h = oracle.entropy()
        out["cross_entropy"] = {"value": ce, "entropy": h, "gap": ce - h}
    return out


#: dataset kind -> ``evaluate(samples, data) -> dict``
EVALUATORS: dict[str, Callable[..., dict]] = {"vector": evaluate_vectors}


def _register_evaluators() -> None:
    from .image_metrics import IMAGE_EVALUATORS
    from .sequence_metrics import SEQUENCE_EVALUATORS
    from .token_metrics import TOKEN_EVALUATORS

    EVALUATORS.update(IMAGE_EVALUATORS)
    EVALUATORS.update(TOKEN_EVALUATORS)
    EVALUATORS.update(SEQUENCE_EVALUATORS)


_register_evaluators()


def evaluate_samples(samples: Tensor, data, **options) -> dict:
    """``EVALUATORS[data.kind](samples, data, **options)``; ``options`` are the evaluator's own (e.g. the image
    evaluator's ``stratified``)."""
    if data.kind not in EVALUATORS:
        raise ValueError(f"no evaluator for data of kind {data.kind!r}; valid: {sorted(EVALUATORS)}")
    return EVALUATORS[data.kind](samples, data, **options)
