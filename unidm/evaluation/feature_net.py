"""A small image classifier trained on the dataset's own training split, whose penultimate layer is the feature
space of the Fréchet and kernel distances (the role Inception-v3's pool3 plays in FID, without a download).

Training is deterministic (seeded initialisation and batch order, one thread) and takes seconds on a CPU. The task
is the data's class labels when it has them, else self-supervised rotation prediction (which of 0, 90, 180, 270
degrees an image was turned by; Gidaris et al. 2018), so any folder of images gets a feature space. The weights are
cached as safetensors (never pickle) in ``$UNIDM_CACHE`` (default ``~/.cache/unidm``) under a key made of the
dataset's name and a hash of its training tensors and of the recipe, so a changed dataset gets a new network.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FeatureNet", "FeatureRecipe", "feature_net_for", "cache_dir", "features"]

_VERSION = 2
_MEMO: dict[str, "FeatureNet"] = {}


def cache_dir() -> str:
    """``$UNIDM_CACHE`` or ``~/.cache/unidm``."""
    return os.environ.get("UNIDM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "unidm")


class FeatureNet(nn.Module):
    """``[B, C, H, W] -> logits [B, num_outputs]``; :meth:`features` gives the penultimate ``[B, feat_dim]``.

    A 3x3 convolution, then (stride-2 convolution, 3x3 convolution) pairs down to at most 4x4 (SiLU after each),
    an average pool to 2x2, a linear layer to ``feat_dim`` (the features, after SiLU) and a linear classifier.
    """

    def __init__(self, in_channels: int, image_size: int, num_outputs: int, width: int = 32, feat_dim: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU()]
        c, side = width, image_size
        while side > 4:
            c_next = min(2 * c, 4 * width)
            layers += [nn.Conv2d(c, c_next, 3, stride=2, padding=1), nn.SiLU(),
                       nn.Conv2d(c_next, c_next, 3, padding=1), nn.SiLU()]
            c, side = c_next, (side + 1) // 2
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(4 * c, feat_dim)
        self.head = nn.Linear(feat_dim, num_outputs)
        #: features are multiplied by this so the training images' features have unit mean variance per dimension
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: Tensor) -> Tensor:
        return F.silu(self.fc(self.body(x))) * self.feature_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.silu(self.fc(self.body(x))))


@dataclass(frozen=True)
class FeatureRecipe:
    """How the feature network is trained (part of the cache key)."""

    width: int = 16
    feat_dim: int = 64
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def _rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each image turned by 0, 90, 180 and 270 degrees, with the rotation index as label."""
    xs = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    return xs, torch.arange(4).repeat_interleave(len(x))


def _task(data) -> tuple[Tensor, Tensor, int, str]:
    x = data.train.float()
    if data.train_labels is not None and data.num_classes > 1:
        return x, data.train_labels.long(), data.num_classes, "labels"
    if x.shape[-1] != x.shape[-2]:
        raise ValueError("rotation features need square images")
    xs, ys = _rotations(x)
    return xs, ys, 4, "rotation"


def _key(data, recipe: FeatureRecipe) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": _VERSION, **asdict(recipe)}, sort_keys=True).encode())
    h.update(data.train.float().contiguous().numpy().tobytes())
    if data.train_labels is not None:
        h.update(data.train_labels.long().contiguous().numpy().tobytes())
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(data.name))[-40:]
    return f"{name}-{h.hexdigest()[:16]}"


def _train(data, recipe: FeatureRecipe) -> tuple[FeatureNet, dict]:
    x, y, k, task = _task(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible on one thread, and fast enough for the small nets here
    try:
        torch.manual_seed(recipe.seed)
        net = FeatureNet(x.shape[1], x.shape[-1], k, recipe.width, recipe.feat_dim)
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        g = torch.Generator().manual_seed(recipe.seed)
        steps = recipe.epochs * max(1, len(x) // recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=steps)
        net.train()
        step = 0
        while step < steps:
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x) - recipe.batch_size + 1, recipe.batch_size):
                if step >= steps:
                    break
                idx = perm[i:i + recipe.batch_size]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
        net.eval()
        info = {"task": task, "outputs": k, "steps": steps}
        with torch.no_grad():
            net.feature_scale.fill_(float(net.features(data.train.float()).var(0).mean().rsqrt()))
            if task == "labels" and data.test_labels is not None:
                pred = net(data.test.float()).argmax(1)
                info["held_out_accuracy"] = float((pred == data.test_labels).float().mean())
            elif task == "rotation":
                xt, yt = _rotations(data.test.float())
                info["held_out_accuracy"] = float((net(xt).argmax(1) == yt).float().mean())
    finally:
        torch.set_num_threads(threads)
    return net, info


def feature_net_for(data, recipe: FeatureRecipe = FeatureRecipe(), cache: str | None = None,
                    verbose: bool = False) -> FeatureNet:
    """The feature network of ``data`` (kind ``"image"``): loaded from the cache, else trained and cached.

    ``net.info`` holds the task, the held-out accuracy and the cache path.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    key = _key(data, recipe)
    if key in _MEMO:
        return _MEMO[key]
    folder = cache or cache_dir()
    path = os.path.join(folder, "feature_nets", key + ".safetensors")
    x = data.train[:1]
    if os.path.isfile(path):
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                state = {name: f.get_tensor(name) for name in f.keys()}
            info = json.loads(meta["info"])
            net = FeatureNet(x.shape[1], x.shape[-1], int(info["outputs"]), recipe.width, recipe.feat_dim)
            net.load_state_dict(state)
            net.eval().requires_grad_(False)
            net.info = {**info, "cache": path}
            _MEMO[key] = net
            return net
        except Exception as e:  # a corrupt or foreign cache file is retrained over, never trusted
            if verbose:
                print(f"feature net cache {path} unusable ({e}); retraining")
    net, info = _train(data, recipe)
    net.requires_grad_(False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({k_: v.contiguous() for k_, v in net.state_dict().items()}, tmp, metadata={"info": json.dumps(info)})
    os.replace(tmp, path)
    net.info = {**info, "cache": path}
    if verbose:
        print(f"trained feature net for {data.name}: {info} -> {path}")
    _MEMO[key] = net
    return net


@torch.no_grad()
def features(net: FeatureNet, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Penultimate features ``[N, feat_dim]`` (float64) of ``images [N, C, H, W]`` in ``[-1, 1]``."""
    out = [net.features(images[i:i + batch_size].float().cpu()) for i in range(0, len(images), batch_size)]
    return torch.cat(out).double()
