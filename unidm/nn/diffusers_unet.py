"""A diffusers ``UNet2DModel`` behind unidm's network contract ``F(c_in x, c_noise, class_labels)``.

diffusers' schedulers feed a UNet the process's own state ``x_t = alpha_t x`` and an integer (DDPM) or float (flow
matching) *timestep*; unidm's :class:`~unidm.denoiser.Denoiser` feeds a network ``c_in x`` with
``c_in = 1 / sqrt(sigma^2 + sigma_data^2)`` and ``c_noise = log(sigma) / 4``. :class:`DiffusersUNet2D` maps one onto
the other, so the same weights answer the same question under either library:

| ``timesteps`` | diffusers timestep ``k`` of the level ``sigma`` | UNet input ``x_t`` from ``c_in x`` |
|---|---|---|
| ``vp-discrete`` | ``k = T t(sigma) - 1``: ``t`` of :class:`~unidm.processes.VPDiscrete` (``abar_{k+1}`` sits at ``t = (k+1)/T``), so DDPM's training index ``k`` lands on ``k`` | ``alpha = 1 / sqrt(1 + sigma^2)`` |
| ``flow`` | ``k = T t`` with ``t = sigma / (1 + sigma)`` (``FlowMatchEulerDiscreteScheduler``: ``timestep = sigma_flow T``) | ``alpha = 1 / (1 + sigma)`` |

``x_t = alpha (c_in x) sqrt(sigma^2 + sigma_data^2)``: with ``sigma_data = 1`` on ``vp-discrete`` this factor is 1
and the input passes unchanged. The map from ``c_noise`` to ``k`` is computed in float64 on the CPU; a ``k`` within
``1e-3`` of an integer is that integer (the float32 rounding of ``c_noise`` would otherwise move DDPM's own
timesteps by about ``1e-5``); between DDPM's timesteps ``k`` is fractional (the sinusoidal embedding takes any real
``k``), which is what lets every unidm grid run on a DDPM model.

diffusers is an optional dependency, imported only when such a network is built (``pip install -e ".[diffusers]"``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..processes import VPDiscrete
from ..utils import as_options, check_choice, check_kwargs

__all__ = ["DiffusersUNet2D", "DiffusersMissing", "diffusers_module", "TIMESTEPS", "SNAP", "DIFFUSERS_NETWORKS"]

#: how ``c_noise`` maps onto the UNet's timestep input (see the module docstring)
TIMESTEPS = ("vp-discrete", "flow")
#: a timestep within this distance of an integer is taken as that integer
SNAP = 1e-3
#: UNet2DModel config keys set from the data and the classes, never by ``model.unet``
_DERIVED_KEYS = ("in_channels", "out_channels", "num_class_embeds")


class DiffusersMissing(ImportError, ValueError):
    """diffusers is not installed (a ``ValueError`` too, so the command line reports it in one line, exit 2)."""


def diffusers_module():
    """The ``diffusers`` package, or :class:`DiffusersMissing` saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise DiffusersMissing('diffusers is not installed; install the optional extra: pip install -e ".[diffusers]"'
                               ) from None
    return diffusers


def _flow_options(num_train_timesteps: int = 1000) -> None:
    """The options of the ``flow`` timestep map (for :func:`unidm.utils.check_kwargs`)."""


class DiffusersUNet2D(nn.Module):
    """diffusers' ``UNet2DModel`` as ``F(x_in [B, C, H, W], c_noise [B], class_labels [B] | None) -> [B, C, H, W]``.

    Args:
        unet: ``UNet2DModel`` init arguments (its ``config.json``), except ``in_channels``, ``out_channels`` and
            ``num_class_embeds``, which come from the data; ``sample_size`` defaults to ``image_size``. Unset keys
            take diffusers' defaults. Only the positional (sinusoidal) time embedding and an ``nn.Embedding`` class
            table (``class_embed_type`` None) are taken.
        in_channels, image_size, num_classes: from the data (``num_classes = 0``: unconditional).
        null_label: a class-conditional UNet has ``num_classes + 1`` class embeddings, the last the "null" label of
            classifier-free guidance (unidm's convention, used when ``class_labels`` is None); ``False`` for a
            UNet trained without one (then ``num_class_embeds = num_classes`` and labels must be given).
        timesteps: ``"vp-discrete"`` or ``"flow"``: the process whose diffusers timestep the UNet takes.
        timestep_options: for ``vp-discrete`` :class:`~unidm.processes.VPDiscrete`'s options (the same as the
            run's ``method.process_options``); for ``flow`` ``num_train_timesteps`` (default 1000).
        sigma_data: the run's ``method.sigma_data`` (undoes ``c_in``; 1 makes the ``vp-discrete`` input exact).

    Tested against diffusers' own schedulers in ``tests/test_diffusers.py`` (diffusers is optional, so there is no
    docstring example here).
    """

    def __init__(self, unet: dict | None = None, in_channels: int = 3, image_size: int = 32, num_classes: int = 0,
                 null_label: bool = True, timesteps: str = "vp-discrete", timestep_options: dict | None = None,
                 sigma_data: float = 1.0):
        super().__init__()
        UNet2DModel = diffusers_module().UNet2DModel
        cfg = {k: v for k, v in as_options(unet, "model.unet").items() if not k.startswith("_")}
        for key in _DERIVED_KEYS:
            if key in cfg:
                raise ValueError(f"model.unet.{key} is set from the data and the classes (in_channels, num_classes), "
                                 "not in model.unet; remove it")
        check_kwargs(UNet2DModel, cfg, "model.unet option (UNet2DModel argument)", exclude=_DERIVED_KEYS)
        if cfg.get("class_embed_type") is not None:
            raise ValueError(f"model.unet.class_embed_type={cfg['class_embed_type']!r} is not supported; a "
                             "class-conditional UNet2DModel here has a table of num_class_embeds class embeddings "
                             "(class_embed_type null)")
        if cfg.get("time_embedding_type", "positional") != "positional":
            raise ValueError(f"model.unet.time_embedding_type={cfg['time_embedding_type']!r} is not supported; only "
                             "'positional' (sinusoidal timestep embedding, the DDPM UNets) is")
        if not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"model.sigma_data must be a positive number, got {sigma_data!r}")
        cfg.setdefault("sample_size", image_size)
        self.num_classes = int(num_classes)
        self.null_label = bool(null_label) and self.num_classes > 0
        embeds = self.num_classes + int(self.null_label) if self.num_classes > 0 else None
        self.unet = UNet2DModel(in_channels=in_channels, out_channels=in_channels, num_class_embeds=embeds, **cfg)
        self.timesteps = check_choice(timesteps, TIMESTEPS, "model.timesteps")
        opts = as_options(timestep_options, "model.timestep_options")
        if timesteps == "vp-discrete":
            check_kwargs(VPDiscrete, opts, "model.timestep_options for 'vp-discrete'")
            self._vp = VPDiscrete(**opts)
            self.num_train_timesteps = self._vp.num_steps
        else:
            check_kwargs(_flow_options, opts, "model.timestep_options for 'flow'")
            self.num_train_timesteps = int(opts.get("num_train_timesteps", 1000))
        self.timestep_options = opts
        self.sigma_data = float(sigma_data)

    def timestep(self, sigma: Tensor) -> Tensor:
        """diffusers' timestep ``k [B]`` (float64) of the sigma-space levels ``sigma [B]`` (float64)."""
        T = self.num_train_timesteps
        k = T * self._vp.t_of_sigma(sigma) - 1 if self.timesteps == "vp-discrete" else T * sigma / (1 + sigma)
        near = torch.round(k)
        return torch.where((k - near).abs() < SNAP, near, k)

    def input_scale(self, sigma: Tensor) -> Tensor | None:
        """``x_t / (c_in x) = alpha sqrt(sigma^2 + sigma_data^2)`` per level, or None where it is exactly 1."""
        norm = torch.sqrt(sigma**2 + self.sigma_data**2)
        if self.timesteps == "vp-discrete":
            return None if self.sigma_data == 1.0 else norm / torch.sqrt(1 + sigma**2)
        return norm / (1 + sigma)

    def _labels(self, class_labels: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        if self.num_classes == 0:
            return None
        if class_labels is None:
            if not self.null_label:
                raise ValueError(f"this UNet has {self.num_classes} classes and no null label (it was not trained "
                                 "with label dropout); give class labels, e.g. --class K")
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        labels = torch.as_tensor(class_labels, device=device).long().reshape(-1).expand(batch)
        if not self.null_label and bool((labels >= self.num_classes).any()):
            raise ValueError(f"label {self.num_classes} is the null label (classifier-free guidance), and this UNet "
                             f"has none: its class embeddings are the {self.num_classes} classes alone")
        return labels

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        sigma = torch.exp(4 * c_noise.detach().to("cpu", torch.float64)).reshape(-1).expand(x.shape[0])
        k = self.timestep(sigma)
        scale = self.input_scale(sigma)
        if scale is not None:
            x = x * scale.to(x.device, x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        labels = self._labels(class_labels, x.shape[0], x.device)
        return self.unet(x, k.to(x.device, torch.float32), class_labels=labels).sample


#: registered in :data:`unidm.nn.NETWORKS`
DIFFUSERS_NETWORKS = {"diffusers-unet2d": DiffusersUNet2D}
