"""Grids: descending, ending at 0, with the closed forms of their papers."""

import math

import pytest
import torch

from unidm.processes import EDM, VPDiscrete, VPLinear
from unidm.samplers import (GRIDS, ddpm_grid, karras_grid, log_snr_grid, make_grid, polyexponential_grid,
                            uniform_t_grid)

F64 = torch.float64


@pytest.mark.parametrize("kind", sorted(GRIDS))
@pytest.mark.parametrize("n", [1, 7, 50])
def test_every_grid_descends_to_zero(kind, n):
    process = VPDiscrete() if kind.startswith("ddpm") else VPLinear()
    g = make_grid(kind, n, process)
    assert g.shape == (n + 1,) and g.dtype == F64
    assert g[-1] == 0 and bool((g[:-1] > 0).all())
    assert bool((g[1:] < g[:-1]).all())


def test_karras_endpoints_and_rho_spacing():
    g = karras_grid(10, 0.002, 80.0, rho=7.0)
    assert g[0].item() == pytest.approx(80.0) and g[-2].item() == pytest.approx(0.002)
    root = g[:-1] ** (1 / 7)
    torch.testing.assert_close(root.diff(), torch.full((9,), (root[-1] - root[0]).item() / 9, dtype=F64))


def test_log_snr_grid_is_uniform_in_log_snr_and_polyexponential_generalizes_it():
    g = log_snr_grid(12, 0.01, 50.0)
    lam = -2 * torch.log(g[:-1])
    torch.testing.assert_close(lam.diff(), torch.full((11,), (lam[-1] - lam[0]).item() / 11, dtype=F64))
    torch.testing.assert_close(polyexponential_grid(12, 0.01, 50.0, rho=1.0), g)
    dense_low = polyexponential_grid(12, 0.01, 50.0, rho=2.0)
    assert dense_low[6] < g[6]  # rho > 1 spends more steps at low noise


def test_uniform_t_grid_is_uniform_in_time():
    p = EDM()
    g = uniform_t_grid(p, 5)
    torch.testing.assert_close(g[:-1], torch.linspace(80.0, 0.002, 5, dtype=F64))


@pytest.mark.parametrize("spacing,expected", [
    ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
    ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
])
def test_ddpm_spacings_hit_the_training_levels(spacing, expected):
    """Timestep ``k`` of DDPM's 1000 training steps has ``abar_k = prod_{j<=k} (1 - beta_j)`` (0-based) and
    sigma-space level ``sqrt((1 - abar_k) / abar_k)`` (Ho et al. 2020; Lin et al. 2024, Table 2)."""
    p = VPDiscrete()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    abar = torch.cumprod(1 - betas, 0)
    k = torch.tensor(expected)
    torch.testing.assert_close(ddpm_grid(p, 10, spacing)[:-1], torch.sqrt((1 - abar[k]) / abar[k]))


def test_make_grid_rejects_unknown_kinds_and_options():
    with pytest.raises(ValueError, match="valid"):
        make_grid("nope", 5, EDM())
    with pytest.raises(ValueError, match="rho"):
        make_grid("karras", 5, EDM(), rhoo=3)
    torch.testing.assert_close(make_grid("exponential", 5, EDM()), log_snr_grid(5, 0.002, 80.0))
    assert math.isclose(float(make_grid("karras", 5, EDM(), sigma_max=10.0)[0]), 10.0)
