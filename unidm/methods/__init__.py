"""Trainable families behind declared faces (:mod:`unidm.methods.base`): ``FAMILIES[name]``.

A new family is a class deriving from the faces it offers, added to :data:`FAMILIES`; the trainer, the run
loader and the command line read only the faces, never a family's name.
"""

from .autoregressive import AUTOREGRESSIVE_FAMILIES
from .base import (DenoisingModel, DensityModel, GenerativeModel, SamplingPlan, SupportsLikelihood,
                   TrainableModel)
from .blur import BLUR_FAMILIES
from .classifier import CLASSIFIER_FAMILIES
from .deletion import DELETION_FAMILIES
from .distill import DISTILL_FAMILIES
from .flows import FLOW_FAMILIES
from .gaussian import GaussianDiffusion
from .masked import MASKED_FAMILIES
from .pfgm import PFGM_FAMILIES
from .pixelcnn import PIXELCNN_FAMILIES
from .uniform import UNIFORM_FAMILIES
from .vae import VAE_FAMILIES
from .variance_heads import VARIANCE_HEAD_FAMILIES
from .zuko_flows import ZUKO_FAMILIES

FAMILIES: dict[str, type[TrainableModel]] = {
    "gaussian": GaussianDiffusion, **MASKED_FAMILIES, **BLUR_FAMILIES, **CLASSIFIER_FAMILIES, **PFGM_FAMILIES,
    **VARIANCE_HEAD_FAMILIES, **UNIFORM_FAMILIES, **DISTILL_FAMILIES,
    **DELETION_FAMILIES,
    **AUTOREGRESSIVE_FAMILIES, **PIXELCNN_FAMILIES, **VAE_FAMILIES,
    **FLOW_FAMILIES, **ZUKO_FAMILIES,
}

__all__ = ["TrainableModel", "GenerativeModel", "SupportsLikelihood", "DenoisingModel", "DensityModel",
           "SamplingPlan", "GaussianDiffusion", "FAMILIES"]
