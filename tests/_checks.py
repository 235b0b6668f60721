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


def check_kernel_family(model) -> torch.Tensor:
    """A ``GaussianDiffusion`` on a 2-D process with its own kernel: its loss is the denoising loss at
    ``process.perturb``'s draw, it trains five finite steps, and ``generate`` is ``prior_sample`` then the
    sampler, bit for bit. Returns the samples."""
    import math

    from unidm.samplers import make_grid, sample

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    x0 = torch.tensor([[-1.0, 0.0], [1.0, 0.0]]).repeat(32, 1)
    g = gen(0)
    sigma = model.loss_fn.noise_levels.draw(model.process, 64, g, x0.device, x0.dtype)
    manual = model.loss_fn.at_x(model.denoiser, x0, model.process.perturb(x0, sigma, g), sigma)
    assert torch.equal(model.loss({"x": x0}, gen(0)), manual)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(5):
        opt.zero_grad()
        loss = model.loss({"x": x0}, gen(step)).mean()
        loss.backward()
        opt.step()
        assert math.isfinite(float(loss.detach()))
    out = model.generate(8, seeds=range(8), sampler="heun", steps=6)
    grid = make_grid("karras", 6, model.process)
    x = model.process.prior_sample((8, 2), float(grid[0]), seeds=range(8))
    model.eval()
    assert torch.equal(out, sample(model.denoiser, x, grid, "heun"))
    return out
