"""Datasets, user arrays, batch order and the two-sample metrics."""

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


def test_mmd_and_energy_separate_distributions():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    c = torch.randn(2000, 2, generator=g) * 1.5 + 0.5
    for fn in (mmd_rbf, energy_distance):
        same, diff = fn(a, b), fn(a, c)
        assert same >= 0 and diff > 10 * same
