"""Noise-conditional classifiers ``p(y | x, sigma)`` for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

A :class:`NoisyClassifier` is trained on noised data ``x = x0 + sigma eps`` in sigma-space, with sigma drawn the
way a diffusion model draws it (any of :data:`unidm.processes.NOISE_LEVELS` under any process), so it serves every
Gaussian model of the same data whatever that model's process: all of them share sigma-space. The network sees
``c_in(sigma) x`` and ``c_noise(sigma)`` like a denoiser's network (Karras et al. 2022, Table 1) and returns
logits; guidance uses it through :class:`unidm.guidance.ClassifierGuidance`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..nn.embedding import EMBEDDINGS
from ..parameterization import c_in, c_noise
from ..processes import NOISE_LEVELS, PROCESSES, build_process
from ..utils import as_options, check_choice, check_kwargs
from .base import TrainableModel, check_positive

__all__ = ["NoisyClassifier", "ClassifierMLP", "ClassifierConvNet", "CLASSIFIER_NETWORKS", "CLASSIFIER_FAMILIES"]


class _NoiseEmbedding(nn.Module):
    def __init__(self, embedding: str, emb_dim: int):
        super().__init__()
        check_choice(embedding, EMBEDDINGS, "embedding")
        self.emb = EMBEDDINGS[embedding](emb_dim)
        self.mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.mlp(self.emb(c_noise))


class _ResBlock(nn.Module):
    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + self.emb(emb)))


class ClassifierMLP(nn.Module):
    """Residual MLP ``(x_in [B, dim], c_noise [B]) -> logits [B, num_classes]`` for flat vectors."""

    def __init__(self, dim: int = 2, num_classes: int = 2, hidden: int = 128, depth: int = 3,
                 embedding: str = "fourier", emb_dim: int = 64):
        super().__init__()
        self.noise_emb = _NoiseEmbedding(embedding, emb_dim)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden, emb_dim) for _ in range(depth))
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.noise_emb(c_noise)
        h = self.inp(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, emb)
        return self.head(h)


class _ConvBlock(nn.Module):
    def __init__(self, c_in_: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(8, c_in_), c_in_), nn.Conv2d(c_in_, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(min(8, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.skip = nn.Conv2d(c_in_, c_out, 1) if c_in_ != c_out else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.conv1(F.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        return self.skip(h) + self.conv2(F.silu(self.norm2(z)))


class ClassifierConvNet(nn.Module):
    """Small convolutional encoder ``(x_in [B, C, H, W], c_noise [B]) -> logits [B, num_classes]``: one residual
    block per entry of ``channels``, 2x average-pool downsampling between them, global average pooling, a linear
    head (the "half UNet" of Dhariwal & Nichol 2021, Sec. 4.1, in miniature)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (32, 64, 64),
                 embedding: str = "fourier", emb_dim: int = 64):
        super().__init__()
        channels = list(channels)
        self.noise_emb = _NoiseEmbedding(embedding, emb_dim)
        self.inp = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(_ConvBlock(a, b, emb_dim) for a, b in zip([channels[0], *channels], channels))
        self.head = nn.Sequential(nn.GroupNorm(min(8, channels[-1]), channels[-1]), nn.SiLU())
        self.out = nn.Linear(channels[-1], num_classes)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.noise_emb(c_noise)
        h = self.inp(x)
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if i < len(self.blocks) - 1 and min(h.shape[-2:]) >= 4:
                h = F.avg_pool2d(h, 2)
        return self.out(self.head(h).mean(dim=(-2, -1)))


#: classifier architectures: ``model.arch`` of a ``family="classifier"`` run
CLASSIFIER_NETWORKS: dict[str, type[nn.Module]] = {"mlp": ClassifierMLP, "conv": ClassifierConvNet}


class NoisyClassifier(TrainableModel):
    """``p_phi(y | x, sigma)`` with ``x = x0 + sigma eps`` in sigma-space; ``forward(x, sigma) -> logits [B, K]``.

    Trained by :meth:`loss`: the cross-entropy ``-log p_phi(y | x0 + sigma eps, sigma)`` with ``sigma`` drawn from
    ``noise_levels`` under ``process`` (Dhariwal & Nichol 2021, Sec. 4.1 train on noised images at the diffusion's
    own noise levels).

    Args:
        net: ``net(c_in * x, c_noise) -> logits`` (see :data:`CLASSIFIER_NETWORKS`).
        num_classes: K.
        process, process_options: the process whose time axis ``noise_levels`` draws on (``uniform-t``,
            ``logit-normal``); irrelevant to ``lognormal``, which draws sigma directly.
        noise_levels, noise_options: a name in :data:`unidm.processes.NOISE_LEVELS` and its arguments.
        sigma_data: data standard deviation, for ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``.
        clean_fraction: fraction of each batch trained at ``sigma = 0`` (the sampler's last steps need it).
        precondition: scale the network's logits by ``c_out = sigma_data / sqrt(sigma^2 + sigma_data^2)`` and add
            a learned ``log_prior`` (see below).

    Output preconditioning. Guidance adds ``w sigma^2 grad_x log p(y | x, sigma)``; for large sigma the true
    logits are ``log p(y) + x . mu_y / sigma^2 + ...`` (a Gaussian mixture), so ``sigma^2 grad`` stays O(1). A
    network that sees ``c_in x`` (unit scale) with free logits has an input gradient of O(c_in) = O(1 / sigma),
    and ``sigma^2`` turns its errors into O(sigma) jumps at noise levels it has barely seen (sigma_max is 80
    for EDM, ~1000 for flow). With ``logits = log_prior + c_out(sigma) F(c_in x, c_noise)`` the guidance term is
    ``sigma^2 c_out c_in grad F = O(sigma_data)`` at every sigma, the logits tend to the class prior as sigma grows,
    as the true posterior does, and at sigma << sigma_data nothing changes (``c_out -> 1``).

    Example:
        >>> import torch
        >>> clf = NoisyClassifier(ClassifierMLP(dim=2, num_classes=3, hidden=16, depth=1), num_classes=3)
        >>> clf(torch.randn(4, 2), torch.full((4,), 0.5)).shape
        torch.Size([4, 3])
        >>> clf.loss({"x": torch.randn(4, 2), "y": torch.tensor([0, 1, 2, 0])}).shape
        torch.Size([4])
    """

    family = "classifier"

    def __init__(self, net: nn.Module, num_classes: int, process: str = "edm", noise_levels: str = "lognormal",
                 sigma_data: float = 0.5, process_options: dict | None = None, noise_options: dict | None = None,
                 clean_fraction: float = 0.0, precondition: bool = True, data_shape: Sequence[int] = (2,)):
        super().__init__(data_shape, num_classes)
        check_positive(sigma_data, "method.sigma_data")
        check_choice(process, PROCESSES, "process")
        check_choice(noise_levels, NOISE_LEVELS, "noise_levels")
        process_options = as_options(process_options, "method.process_options")
        noise_options = as_options(noise_options, "method.noise_options")
        check_kwargs(PROCESSES[process], process_options, f"process_options for {process!r}", exclude=("data_dim",))
        check_kwargs(NOISE_LEVELS[noise_levels], noise_options, f"noise_options for {noise_levels!r}")
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        self.net, self.sigma_data = net, float(sigma_data)
        self.process = build_process(process, process_options, data_dim=int(torch.tensor(self.data_shape).prod()))
        self.noise_levels = NOISE_LEVELS[noise_levels](**noise_options)
        self.clean_fraction = float(clean_fraction)
        self.precondition = bool(precondition)
        self.log_prior = nn.Parameter(torch.zeros(num_classes)) if precondition else None

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """Logits of ``p(y | x, sigma)`` [B, K] for sigma-space ``x`` [B, ...] at noise levels ``sigma`` [B]."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(x.shape[0])
        param_dtype = next(self.net.parameters()).dtype
        scale = c_in(sigma, self.sigma_data).reshape(-1, *([1] * (x.ndim - 1)))
        # c_noise = log(sigma) / 4 is -inf at sigma = 0; clamp to the smallest level a grid reaches
        logits = self.net((scale * x).to(param_dtype), c_noise(sigma.clamp_min(1e-4)).to(param_dtype))
        if not self.precondition:
            return logits
        c_out = self.sigma_data / torch.sqrt(sigma**2 + self.sigma_data**2)
        return self.log_prior + c_out.to(logits.dtype)[:, None] * logits

    def log_prob(self, x: Tensor, sigma: Tensor | float, y: Tensor) -> Tensor:
        """``log p(y | x, sigma)`` [B]."""
        return torch.log_softmax(self(x, sigma), -1).gather(1, y.long().reshape(-1, 1)).squeeze(1)

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        if "y" not in batch:
            raise ValueError("a noise-conditional classifier trains on labelled data; this dataset has no labels")
        x0, y = batch["x"], batch["y"].long()
        sigma = self.noise_levels.draw(self.process, x0.shape[0], generator, x0.device, x0.dtype)
        if self.clean_fraction > 0:
            clean = torch.rand(sigma.shape, generator=generator, device=x0.device) < self.clean_fraction
            sigma = torch.where(clean, torch.zeros_like(sigma), sigma)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * eps
        return F.cross_entropy(self(x, sigma).float(), y, reduction="none")

    @torch.no_grad()
    def accuracy(self, x0: Tensor, y: Tensor, sigma: float, generator: torch.Generator | None = None) -> float:
        """Fraction of ``x0 + sigma eps`` classified as ``y``."""
        x = x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return float((self(x, torch.full((x0.shape[0],), sigma)).argmax(-1) == y.to(x0.device)).float().mean())

    @torch.no_grad()
    def report(self, data, sigmas: Sequence[float] = (0.0, 0.1, 0.3, 1.0, 3.0), n: int = 2000, seed: int = 0) -> str:
        """Held-out accuracy at a few noise levels, one line (printed by ``unidm train``)."""
        if data.test_labels is None:
            return "classifier: no held-out labels to report accuracy on"
        x, y = data.test[:n].to(self.device), data.test_labels[:n]
        g = torch.Generator().manual_seed(seed)
        with self.evaluating():
            accs = [f"sigma={s:g}: {self.accuracy(x, y, s, generator=g):.3f}" for s in sigmas]
        return f"classifier held-out accuracy ({len(x)} examples): " + ", ".join(accs)

    @classmethod
    def from_config(cls, model_cfg: dict, method_cfg: dict, data,
                    frozen: dict[str, TrainableModel] | None = None) -> "NoisyClassifier":
        """Build from a run config's ``model`` (``arch``: ``mlp`` for vectors, ``conv`` for images, and its
        options) and ``method`` (this class's options; ``sigma_data = "auto"`` takes the data's std)."""
        if data.num_classes < 2:
            raise ValueError(f"family 'classifier' needs labelled data; dataset {data.name!r} has no classes")
        method = dict(method_cfg)
        if method.get("sigma_data", "auto") == "auto":
            method["sigma_data"] = round(data.std, 4)
        check_kwargs(cls, method, "method option for family 'classifier'", exclude=("net", "num_classes", "data_shape"))
        model = dict(model_cfg)
        arch = model.pop("arch", "conv" if data.kind == "image" else "mlp")
        check_choice(arch, CLASSIFIER_NETWORKS, "model.arch for family 'classifier'")
        net_cls = CLASSIFIER_NETWORKS[arch]
        check_kwargs(net_cls, model, f"model options for classifier arch {arch!r}", exclude=("num_classes",))
        derived = {"dim": int(torch.tensor(data.shape).prod())} if arch == "mlp" else {"in_channels": data.shape[0]}
        net = net_cls(num_classes=data.num_classes, **{**derived, **model})
        return cls(net, num_classes=data.num_classes, data_shape=data.shape, **method)


CLASSIFIER_FAMILIES: dict[str, type[TrainableModel]] = {"classifier": NoisyClassifier}
