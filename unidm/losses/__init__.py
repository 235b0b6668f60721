"""Losses: small callables returning per-example losses ``[B]``; each owns its noise-level distribution and
weighting, and the trainer reduces."""

from .coupling import COUPLINGS, couple
from .dsm import DenoisingLoss
from .weighting import WEIGHTINGS, weighting_fn

__all__ = ["DenoisingLoss", "WEIGHTINGS", "weighting_fn", "COUPLINGS", "couple"]
