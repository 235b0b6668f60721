"""Trainable families behind one face (:class:`GenerativeModel`): ``FAMILIES[name]``."""

from .base import GenerativeModel
from .blur import BLUR_FAMILIES
from .classifier import CLASSIFIER_FAMILIES
from .gaussian import GaussianDiffusion
from .masked import MASKED_FAMILIES

FAMILIES: dict[str, type[GenerativeModel]] = {
    "gaussian": GaussianDiffusion, **MASKED_FAMILIES, **BLUR_FAMILIES, **CLASSIFIER_FAMILIES,
}

__all__ = ["GenerativeModel", "GaussianDiffusion", "FAMILIES"]
