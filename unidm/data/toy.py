"""2-D toy distributions (moons, circles, swiss roll, 8 gaussians, checkerboard, pinwheel, two spirals).

Moons and circles are scikit-learn's shapes drawn at random (i.i.d.) angles, the swiss roll is scikit-learn's
generator; the others follow their usual definitions (Grathwohl et al. 2019, FFJORD, App. C). All are scaled to
roughly unit standard deviation per axis. Train, held-out and noise-floor sets are independent draws.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TOY_GENERATORS", "make_toy"]


def _moons(n, rng, noise):
    # scikit-learn's make_moons places its points at evenly spaced angles, so two of its draws are far closer to each
    # other than two i.i.d. samples would be (a noise floor too low to reach). Same two half circles, random angles.
    upper = rng.rand(n) < 0.5
    a = rng.rand(n) * math.pi
    x = np.where(upper, np.cos(a), 1 - np.cos(a))
    y = np.where(upper, np.sin(a), 1 - np.sin(a) - 0.5)
    pts = np.stack([x, y], 1) + rng.randn(n, 2) * noise
    return (pts - np.array([0.5, 0.25])) / np.array([0.87, 0.5])


def _circles(n, rng, noise):
    # as make_circles (factor 0.5), with random rather than evenly spaced angles (see _moons)
    outer = rng.rand(n) < 0.5
    a = rng.rand(n) * 2 * math.pi
    r = np.where(outer, 1.0, 0.5)
    pts = np.stack([r * np.cos(a), r * np.sin(a)], 1) + rng.randn(n, 2) * noise
    return pts / 0.56


def _swissroll(n, rng, noise):
    from sklearn import datasets as skd  # imported here: sklearn costs ~1 s at start-up

    x, _ = skd.make_swiss_roll(n, noise=noise * 10, random_state=rng)
    return x[:, [0, 2]] / 7.0


def _gaussians8(n, rng, noise):
    centers = np.array([(math.cos(a), math.sin(a)) for a in np.arange(8) * math.pi / 4]) * 2.0
    k = rng.randint(0, 8, n)
    return (centers[k] + rng.randn(n, 2) * max(noise, 0.05) * 2.0) / 1.42


def _checkerboard(n, rng, noise):
    x1 = rng.rand(n) * 4 - 2
    x2 = rng.rand(n) - rng.randint(0, 2, n) * 2.0
    x2 = x2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1) / 1.15


def _pinwheel(n, rng, noise, arms=5, radial_std=0.3, rate=0.25):
    tangential_std = max(noise, 0.05)
    angles = np.linspace(0, 2 * math.pi, arms, endpoint=False)
    feats = rng.randn(n, 2) * np.array([radial_std, tangential_std])
    feats[:, 0] += 1.0
    labels = rng.randint(0, arms, n)
    rot = angles[labels] + rate * np.exp(feats[:, 0])
    c, s = np.cos(rot), np.sin(rot)
    out = np.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], 1)
    return out / 0.8


def _spirals(n, rng, noise):
    m = n // 2
    t = np.sqrt(rng.rand(m)) * 3 * math.pi
    a = np.stack([t * np.cos(t), t * np.sin(t)], 1)
    pts = np.concatenate([a, -a[: n - m]], 0) / (3 * math.pi) * 2.5
    pts = pts + rng.randn(n, 2) * max(noise, 0.02)
    return pts[rng.permutation(n)] / 1.1


TOY_GENERATORS = {
    "moons": _moons, "circles": _circles, "swissroll": _swissroll, "8gaussians": _gaussians8,
    "checkerboard": _checkerboard, "pinwheel": _pinwheel, "spirals": _spirals,
}


def make_toy(name: str, n: int, seed: int, noise: float = 0.05) -> np.ndarray:
    """``n`` points of toy ``name`` as a float32 array ``[n, 2]`` from a seeded generator."""
    if name not in TOY_GENERATORS:
        raise ValueError(f"unknown toy dataset {name!r}; valid: {', '.join(sorted(TOY_GENERATORS))}")
    rng = np.random.RandomState(seed)
    return TOY_GENERATORS[name](n, rng, noise).astype(np.float32)
