"""Datasets, user arrays, batch order and the two-sample metrics."""

import math

import numpy as np
import pytest
import torch

from unidm.data import DATASETS, BatchOrder, build_dataset, load_array
from unidm.evaluation.metrics import energy_distance, mmd_rbf, sliced_wasserstein


@pytest.mark.parametrize("name", ["moons", "circles", "swissroll", "8gaussians", "checkerboard", "pinwheel",
                                  "spirals", "gmm-ring", "gmm-grid"])
def test_toys_are_2d_standardized_and_seeded(name):
    d = build_dataset(name, n_train=4000, n_test=1000)
    assert d.train.shape == (4000, 2) and d.test.shape == (1000, 2)
    assert torch.all(d.train.std(0) > 0.6) and torch.all(d.train.std(0) < 1.5)
    assert torch.all(d.train.mean(0).abs() < 0.35)
    again = build_dataset(name, n_train=4000, n_test=1000)
    assert torch.equal(d.train, again.train)
    assert not torch.equal(d.train[:1000], d.test)  # held-out is an independent draw


def test_unknown_dataset_and_option_name_the_valid_ones():
    with pytest.raises(ValueError, match="valid:.*moons"):
        build_dataset("moon")
    with pytest.raises(ValueError, match="valid: n_train, n_test, noise, seed"):
        build_dataset("moons", n_trian=10)


def test_user_arrays(tmp_path):
    x = np.random.RandomState(0).randn(50, 3).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", data=x)
    np.savetxt(tmp_path / "c.csv", x, delimiter=",", header="a,b,c", comments="")
    for f in ("a.npy", "b.npz", "c.csv"):
        np.testing.assert_allclose(load_array(str(tmp_path / f)), x, rtol=1e-6)
    d = DATASETS["array"](str(tmp_path / "a.npy"), test_fraction=0.2)
    assert d.train.shape == (40, 3) and d.test.shape == (10, 3)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an array")
    with pytest.raises(ValueError, match="bad.npy"):
        load_array(str(bad))
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="obj.npy"):
        load_array(str(obj))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_array(str(tmp_path / "missing.csv"))


def test_batch_order_is_epochs_of_permutations_and_shards():
    order = BatchOrder(n=10, batch_size=4, seed=3)
    stream = torch.cat([order.indices(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert torch.equal(BatchOrder(10, 4, 3).indices(3), order.indices(3))  # recomputable from the step alone
    r0, r1 = BatchOrder(10, 4, 3, rank=0, world_size=2), BatchOrder(10, 4, 3, rank=1, world_size=2)
    both = torch.stack([r0.indices(2), r1.indices(2)], 1).reshape(-1)
    assert torch.equal(both, order.indices(2))


def test_sliced_w2_closed_form_for_shifted_gaussians():
    """For N(0, I) vs N(m, I) in d dims, SW2^2 = E_theta (theta . m)^2 = |m|^2 / d."""
    g = torch.Generator().manual_seed(0)
    d, n = 4, 10_000
    m = torch.tensor([1.0, -0.5, 0.0, 2.0])
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, d, generator=g) + m
    expected = float((m**2).sum() / d) ** 0.5
    assert abs(sliced_wasserstein(x, y, projections=1000) - expected) < 0.05 * expected
    # unequal sizes go through the quantile functions
    assert abs(sliced_wasserstein(x[:7000], y, projections=1000) - expected) < 0.05 * expected
    assert sliced_wasserstein(x, x) == 0.0


def _replicates(fn, shift, dim, n=500, reps=8):
    """``fn(x, y)`` for ``reps`` independent draws ``x ~ N(0, I)``, ``y ~ N(shift e_1, I)`` of ``n`` points."""
    g = torch.Generator().manual_seed(1)
    m = torch.zeros(dim, dtype=torch.float64)
    m[0] = shift
    out = [fn(torch.randn(n, dim, generator=g, dtype=torch.float64),
              torch.randn(n, dim, generator=g, dtype=torch.float64) + m) for _ in range(reps)]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_mmd_matches_its_closed_form_for_gaussians(shift):
    """N(0, I) vs N(m, I) in d = 2 with k_b(a, c) = exp(-|a - c|^2 / (2 b^2)): E k_b(X, X') = (b^2 / (b^2 + 2))^(d/2)
    =: A_b and E k_b(X, Y) = A_b exp(-|m|^2 / (2 (b^2 + 2))). The V-statistic keeps the n diagonal ones of each
    self-term, so E[MMD^2_V] = sum_b 2 / n + 2 (1 - 1/n) A_b - 2 A_b exp(-|m|^2 / (2 (b^2 + 2)))."""
    n, d, scales = 500, 2, (0.1, 0.2, 0.5, 1.0, 2.0)
    values = _replicates(lambda x, y: mmd_rbf(x, y, scales=scales, bandwidth=1.0), shift, d, n)
    expected = 0.0
    for b in scales:
        a = (b**2 / (b**2 + 2)) ** (d / 2)
        expected += 2 / n + 2 * (1 - 1 / n) * a - 2 * a * math.exp(-shift**2 / (2 * (b**2 + 2)))
    se = float(values.std()) / len(values) ** 0.5
    assert abs(float(values.mean()) - expected) < 4 * se
    assert shift == 0 or se < 0.1 * expected  # the check has the power to see a wrong formula


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_energy_distance_matches_its_closed_form_for_gaussians(shift):
    """1-D N(0, 1) vs N(m, 1): X - Y ~ N(-m, 2), so E|X - Y| = sqrt(2) sqrt(2/pi) exp(-m^2/4) + m (1 - 2 Phi(-m /
    sqrt 2)) and E|X - X'| = 2 / sqrt(pi); the V-statistic's zero diagonals give E[ED_V] = 2 E|X - Y| - 2 (1 - 1/n)
    2 / sqrt(pi)."""
    n = 500
    values = _replicates(energy_distance, shift, 1, n)
    phi = 0.5 * (1 + math.erf(-shift / 2))  # Phi(-m / sqrt 2)
    e_xy = math.sqrt(2) * math.sqrt(2 / math.pi) * math.exp(-shift**2 / 4) + shift * (1 - 2 * phi)
    expected = 2 * e_xy - 2 * (1 - 1 / n) * 2 / math.sqrt(math.pi)
    se = float(values.std()) / len(values) ** 0.5
    assert abs(float(values.mean()) - expected) < 4 * se
    assert shift == 0 or se < 0.1 * expected
