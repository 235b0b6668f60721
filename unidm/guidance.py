"""Guidance as wrappers ``Denoiser -> Denoiser``: any process, parameterization and sampler can be guided.

Both wrappers take the class through the ``class_labels=`` conditioning keyword, like every conditional denoiser,
and return ``D_w(x, sigma, class_labels=y) -> x0_hat`` of shape ``x.shape``.

**One scale convention for both.** Guidance with weight ``w`` samples (approximately) the tilted density
``p_w(x | y) ∝ p(x) p(y | x)^w``, whose denoiser is, by Tweedie's formula ``D = x + sigma^2 grad log p``::

    D_w(x, sigma | y) = D(x, sigma) + w * sigma^2 * grad_x log p(y | x, sigma)

- ``w = 0`` is the unconditional model, ``w = 1`` the conditional one (no extra guidance), ``w > 1`` trades
  diversity for fidelity.
- :class:`ClassifierGuidance` computes the gradient from a noise-conditional classifier (Dhariwal & Nichol 2021,
  "Diffusion Models Beat GANs on Image Synthesis", Sec. 4, Algorithms 1-2: the scale ``s`` there is ``w`` here).
- :class:`ClassifierFreeGuidance` uses the implicit classifier ``sigma^2 grad log p(y|x) = D(x|y) - D(x|null)``
  of a model trained with label dropout (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6 and
  Algorithms 1-2), so ``D_w = D_u + w (D_c - D_u)``. Ho & Salimans write ``(1 + w_HS) eps_c - w_HS eps_u``:
  their ``w_HS`` is ``w - 1`` here (``w_HS = 0`` is our ``w = 1``); ours is the "guidance weight" of Karras et al.
  2024 and Kynkäänniemi et al. 2024.

**Guidance interval** (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and
Distribution Quality in Diffusion Models", Sec. 3, the piecewise weight w(sigma)): the weight is ``w`` only for
``sigma_lo <= sigma <= sigma_hi`` and **1 outside**, so outside the interval both wrappers return their estimate
of the *conditional* denoiser ``E[x0 | x, y]`` (CFG: ``D(x | y)`` alone, one pass).

**Rescale** (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Sec. 3.4,
eq. 15-16): the guided prediction is scaled to the per-example standard deviation of the conditional one and
mixed back with weight ``phi = rescale``; applied here to the x0 prediction ``D``.

:class:`AutoGuidance` (Karras et al. 2024) guides a model with a weaker version of itself,
``D_w = D_bad + w (D_good - D_bad)``, with the same scale convention (``w = 1``: the good model alone); it needs no
classes.

Also here: :class:`MixtureClassOracle`, the exact class-conditional denoiser and exact classifier
``p(y | x, sigma)`` of a Gaussian mixture whose components are the classes (the closed forms the tests use).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .denoiser import DenoiserFn
from .oracles import GaussianMixtureOracle
from .utils import as_sigma_batch

__all__ = [
    "ClassifierFreeGuidance", "ClassifierGuidance", "AutoGuidance", "MixtureClassOracle", "classifier_log_prob_grad",
    "rescale_guided", "guidance_mask", "infer_null_label",
]


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _labels(class_labels, x: Tensor, who: str) -> Tensor:
    if class_labels is None:
        raise ValueError(f"{who} needs the class to guide towards: pass class_labels=[B] (or a scalar)")
    y = torch.as_tensor(class_labels, device=x.device).long()
    return y.expand(x.shape[0]) if y.ndim == 0 else y.reshape(x.shape[0])


def _check_interval(sigma_lo: float, sigma_hi: float) -> None:
    if not (0 <= sigma_lo <= sigma_hi):
        raise ValueError(f"guidance interval needs 0 <= sigma_lo <= sigma_hi, got [{sigma_lo}, {sigma_hi}]")


def guidance_mask(sigma: Tensor, sigma_lo: float, sigma_hi: float) -> Tensor:
    """``[B]`` bool: which noise levels lie in the guidance interval ``[sigma_lo, sigma_hi]``."""
    return (sigma >= sigma_lo) & (sigma <= sigma_hi)


def infer_null_label(denoiser) -> int:
    """The null label of a class-conditional denoiser: its (or its network's) ``num_classes``."""
    for obj in (denoiser, getattr(denoiser, "net", None), getattr(denoiser, "denoiser", None),
                getattr(getattr(denoiser, "denoiser", None), "net", None)):
        k = getattr(obj, "num_classes", None) if obj is not None else None
        if isinstance(k, int) and k > 0:
            return k
    raise ValueError("cannot tell this denoiser's null label (no num_classes > 0 on it or its .net); it must be "
                     "class-conditional and trained with label dropout; pass null_label= explicitly")


def rescale_guided(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """Lin et al. 2024, eq. 15-16: ``x_rescaled = guided * std(cond) / std(guided)`` (per example, over all
    non-batch dims), returned as ``phi * x_rescaled + (1 - phi) * guided``."""
    if phi == 0:
        return guided
    dims = tuple(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return phi * guided * ratio + (1 - phi) * guided


def _per_example(v, batch: int) -> bool:
    """Whether a conditioning value is a per-example tensor ``[B, ...]`` (else it is shared by the batch)."""
    return isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == batch


def _split_cond(cond: dict, batch: int, idx: Tensor) -> dict:
    """Extend per-example conditioning tensors ``[B, ...]`` by the rows ``idx`` (for the unconditional half)."""
    return {k: torch.cat([v, v[idx]]) if _per_example(v, batch) else v for k, v in cond.items()}


def _take_cond(cond: dict, batch: int, idx: Tensor) -> dict:
    """The rows ``idx`` of per-example conditioning tensors ``[B, ...]``; shared values as they are."""
    return {k: v[idx] if _per_example(v, batch) else v for k, v in cond.items()}


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) of a model trained with label dropout.

    ``D_w(x, sigma | y) = D(x, sigma | null) + w (D(x, sigma | y) - D(x, sigma | null))`` inside
    ``[sigma_lo, sigma_hi]`` (Kynkäänniemi et al. 2024), ``D(x, sigma | y)`` outside; optionally rescaled
    (Lin et al. 2024, eq. 15-16). The conditional and unconditional passes go through the wrapped denoiser in
    **one** call on a batch of ``B + n_inside`` rows (only the rows inside the interval need the unconditional
    pass; ``w = 1`` needs none).

    Args:
        denoiser: a class-conditional ``D(x, sigma, class_labels=[B])`` whose label ``null_label`` means "no
            class" (the MLP and UNet reserve index ``num_classes``).
        scale: the guidance weight ``w`` (``w = 0`` unconditional, ``1`` conditional; ``w_HS = w - 1``).
        sigma_lo, sigma_hi: the guidance interval in sigma-space (default: everywhere).
        rescale: ``phi`` of Lin et al. 2024 in ``[0, 1]`` (0: off).
        null_label: the unconditional label (default: inferred from ``num_classes``).

    Example:
        >>> import torch
        >>> from unidm.data.mixtures import ring
        >>> exact = MixtureClassOracle(ring(k=4))
        >>> D = ClassifierFreeGuidance(exact, scale=1.0, null_label=exact.null_label)
        >>> x, s = torch.randn(3, 2, dtype=torch.float64), torch.full((3,), 0.7, dtype=torch.float64)
        >>> torch.allclose(D(x, s, class_labels=2), exact(x, s, class_labels=torch.full((3,), 2)))
        True
    """

    def __init__(self, denoiser: DenoiserFn, scale: float, sigma_lo: float = 0.0, sigma_hi: float = math.inf,
                 rescale: float = 0.0, null_label: int | None = None):
        _check_interval(sigma_lo, sigma_hi)
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale (phi of Lin et al. 2024) must lie in [0, 1], got {rescale}")
        if not math.isfinite(scale):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        self.denoiser, self.scale, self.rescale = denoiser, float(scale), float(rescale)
        self.sigma_lo, self.sigma_hi = float(sigma_lo), float(sigma_hi)
        self.null_label = infer_null_label(denoiser) if null_label is None else int(null_label)

    def __call__(self, x: Tensor, sigma: Tensor | float, class_labels=None, **cond) -> Tensor:
        sigma = as_sigma_batch(sigma, x)
        y = _labels(class_labels, x, "ClassifierFreeGuidance")
        batch = x.shape[0]
        idx = guidance_mask(sigma, self.sigma_lo, self.sigma_hi).nonzero().reshape(-1)
        if self.scale == 1.0 or idx.numel() == 0:
            return self.denoiser(x, sigma, class_labels=y, **cond)
        out = self.denoiser(torch.cat([x, x[idx]]), torch.cat([sigma, sigma[idx]]),
                            class_labels=torch.cat([y, torch.full_like(y[idx], self.null_label)]),
                            **_split_cond(cond, batch, idx))
        d_cond, d_uncond = out[:batch], out[batch:]
        d_cond_in = d_cond[idx]
        guided = rescale_guided(d_uncond + self.scale * (d_cond_in - d_uncond), d_cond_in, self.rescale)
        return d_cond.index_copy(0, idx, guided)

    def __repr__(self) -> str:
        return (f"ClassifierFreeGuidance(scale={self.scale}, interval=[{self.sigma_lo}, {self.sigma_hi}], "
                f"rescale={self.rescale}, null_label={self.null_label})")


class AutoGuidance:
    """Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", eq. 2 and
    Sec. 3): guide a model with a weaker version of itself (fewer training steps, a smaller network) instead of an
    unconditional model, ``D_w = D_bad + w (D_good - D_bad)``; no class is needed.

    Both models make the same kind of errors, the weaker one more: extrapolating away from it removes what the
    good model gets wrong, which concentrates samples where the good model is sure (the too-broad outskirts of an
    under-trained model). For two zero-mean Gaussians with variances ``v_good, v_bad`` the probability-flow ODE
    of ``D_w`` maps ``x(sigma_max)`` to ``x(0)`` times
    ``[(v_bad / (v_bad + sigma_max^2))^(1 - w) (v_good / (v_good + sigma_max^2))^w]^(1/2)`` (tested), a geometric
    extrapolation of the variance from the bad model through the good one.

    Args:
        denoiser: the good model ``D(x, sigma, **cond)``.
        guide: the bad model, same signature (e.g. an early EMA checkpoint of the same run).
        scale: the weight ``w`` (1: the good model alone, one pass; > 1 stronger).
        sigma_lo, sigma_hi: the guidance interval (weight 1 outside, as for the other wrappers).

    Example:
        >>> import torch
        >>> from unidm.oracles import GaussianOracle
        >>> good = GaussianOracle(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
        >>> bad = GaussianOracle(torch.zeros(1, dtype=torch.float64), torch.full((1,), 2.0, dtype=torch.float64))
        >>> D = AutoGuidance(good, bad, scale=2.0)
        >>> x, s = torch.ones(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        >>> round(float(D(x, s)[0, 0]), 6)  # 2/3 + 2 (1/2 - 2/3)
        0.333333
    """

    def __init__(self, denoiser: DenoiserFn, guide: DenoiserFn, scale: float, sigma_lo: float = 0.0,
                 sigma_hi: float = math.inf):
        _check_interval(sigma_lo, sigma_hi)
        if not math.isfinite(scale):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        self.denoiser, self.guide, self.scale = denoiser, guide, float(scale)
        self.sigma_lo, self.sigma_hi = float(sigma_lo), float(sigma_hi)

    def __call__(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        sigma = as_sigma_batch(sigma, x)
        d_good = self.denoiser(x, sigma, **cond)
        idx = guidance_mask(sigma, self.sigma_lo, self.sigma_hi).nonzero().reshape(-1)
        if self.scale == 1.0 or idx.numel() == 0:
            return d_good
        d_bad = self.guide(x[idx], sigma[idx], **_take_cond(cond, x.shape[0], idx))
        return d_good.index_copy(0, idx, d_bad + self.scale * (d_good[idx] - d_bad))

    def __repr__(self) -> str:
        return f"AutoGuidance(scale={self.scale}, interval=[{self.sigma_lo}, {self.sigma_hi}])"


def classifier_log_prob_grad(classifier, x: Tensor, sigma: Tensor, y: Tensor) -> Tensor:
    """``grad_x log p(y | x, sigma)`` [B, ...] by autograd, where ``classifier(x, sigma [B]) -> logits [B, K]``
    (normalized here with a log-softmax). Works inside ``torch.no_grad()`` (the samplers' context)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = classifier(xg, sigma.detach())
        log_p = torch.log_softmax(logits, dim=-1).gather(1, y.reshape(-1, 1)).sum()
        (grad,) = torch.autograd.grad(log_p, xg)
    return grad.to(x.dtype)


class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol 2021, Sec. 4.1-4.2, Algorithms 1-2) in sigma-space.

    ``D_w(x, sigma | y) = D(x, sigma) + w * sigma^2 * grad_x log p_phi(y | x, sigma)``: Algorithm 1 shifts the
    mean by ``s Sigma grad log p``; in sigma-space the shift of ``E[x0 | x]`` is ``sigma^2`` times the change of
    the score (Tweedie), which is what is added here; it applies to every sampler (Algorithm 2's eps-form
    ``eps - sqrt(1 - abar) grad log p`` is the same correction written for eps). Inside ``[sigma_lo, sigma_hi]``
    the weight is ``w``, outside it is 1.

    Args:
        denoiser: the base denoiser. By default it is called **without** ``class_labels`` (an unconditional model,
            or a conditional one whose missing label means the null label, as in the MLP and UNet).
        classifier: ``classifier(x, sigma [B]) -> logits [B, K]`` in sigma-space (a trained
            :class:`~unidm.methods.classifier.NoisyClassifier` or :meth:`MixtureClassOracle.logits`).
        scale: ``w`` (0: the base model; 1: the conditional model if the classifier is exact).
        conditional_base: call the base with ``class_labels=y`` (a conditional model) and add
            ``(w - 1) sigma^2 grad log p``, so that ``w = 1`` is again the plain conditional model (Dhariwal &
            Nichol's scale ``s`` on a conditional model is ``w = 1 + s`` here).

    Example:
        >>> import torch
        >>> from unidm.data.mixtures import ring
        >>> exact = MixtureClassOracle(ring(k=4))
        >>> D = ClassifierGuidance(exact, exact.logits, scale=1.0)
        >>> x, s = torch.randn(3, 2, dtype=torch.float64), torch.full((3,), 0.7, dtype=torch.float64)
        >>> torch.allclose(D(x, s, class_labels=2), exact(x, s, class_labels=torch.full((3,), 2)))
        True
    """

    def __init__(self, denoiser: DenoiserFn, classifier, scale: float, sigma_lo: float = 0.0,
                 sigma_hi: float = math.inf, conditional_base: bool = False):
        _check_interval(sigma_lo, sigma_hi)
        if not math.isfinite(scale):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        self.denoiser, self.classifier, self.scale = denoiser, classifier, float(scale)
        self.sigma_lo, self.sigma_hi = float(sigma_lo), float(sigma_hi)
        self.conditional_base = conditional_base

    def __call__(self, x: Tensor, sigma: Tensor | float, class_labels=None, **cond) -> Tensor:
        sigma = as_sigma_batch(sigma, x)
        y = _labels(class_labels, x, "ClassifierGuidance")
        base = self.denoiser(x, sigma, class_labels=y, **cond) if self.conditional_base else self.denoiser(
            x, sigma, **cond)
        w = torch.where(guidance_mask(sigma, self.sigma_lo, self.sigma_hi), self.scale, 1.0).to(x.dtype)
        if self.conditional_base:
            w = w - 1.0
        if bool((w == 0).all()):
            return base
        grad = classifier_log_prob_grad(self.classifier, x, sigma, y)
        return base + _bcast(w * sigma**2, x) * grad

    def __repr__(self) -> str:
        return (f"ClassifierGuidance(scale={self.scale}, interval=[{self.sigma_lo}, {self.sigma_hi}], "
                f"conditional_base={self.conditional_base})")


class MixtureClassOracle:
    """Exact conditional pieces of a Gaussian mixture ``sum_k w_k N(mu_k, diag(v_k))`` whose components are the
    classes ``y = k``:

    - ``__call__(x, sigma, class_labels=None)``: ``E[x0 | x, y] = mu_y + v_y / (v_y + sigma^2) (x - mu_y)`` (the
      denoiser of component ``y`` alone); the label ``null_label = K`` (or ``None``) gives the unconditional
      mixture denoiser, as a model trained with label dropout would.
    - :meth:`logits`: ``log p(y | x, sigma)`` [B, K], the log posterior responsibilities under ``N(mu_k, v_k +
      sigma^2)`` (the exact noise-conditional classifier).
    """

    def __init__(self, oracle: GaussianMixtureOracle):
        self.oracle = oracle
        self.num_classes = self.null_label = oracle.num_components

    def logits(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        s2 = as_sigma_batch(sigma, x).reshape(-1, 1, 1) ** 2
        var = self.oracle.variances.to(x)[None] + s2  # [B, K, d]
        diff = x[:, None, :] - self.oracle.means.to(x)[None]
        logp = -0.5 * (diff**2 / var + torch.log(var) + math.log(2 * math.pi)).sum(-1)
        return torch.log_softmax(logp + torch.log(self.oracle.weights.to(x)), dim=-1)

    def __call__(self, x: Tensor, sigma: Tensor | float, class_labels=None, **cond) -> Tensor:
        sigma = as_sigma_batch(sigma, x)
        uncond = self.oracle(x, sigma)
        if class_labels is None:
            return uncond
        y = _labels(class_labels, x, "MixtureClassOracle")
        k = y.clamp_max(self.num_classes - 1)
        mu, v = self.oracle.means.to(x)[k], self.oracle.variances.to(x)[k]
        cond_d = mu + v / (v + sigma.reshape(-1, 1) ** 2) * (x - mu)
        return torch.where((y == self.null_label).reshape(-1, 1), uncond, cond_d)
