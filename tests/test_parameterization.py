"""Every parameterization round-trips under every process, and the denoiser wrapper obeys the contract."""

import pytest
import torch

from unidm.denoiser import Denoiser
from unidm.parameterization import PARAMETERIZATIONS, path_coefficients
from unidm.processes import PROCESSES


@pytest.mark.parametrize("process", sorted(PROCESSES))
@pytest.mark.parametrize("param", sorted(PARAMETERIZATIONS))
def test_roundtrip(process, param):
    p = PROCESSES[process]()
    q = PARAMETERIZATIONS[param](sigma_data=0.7)
    g = torch.Generator().manual_seed(0)
    t = p.t_min + (p.t_max_sampling - p.t_min) * torch.rand(64, generator=g, dtype=torch.float64)
    sigma = p.sigma_of_t(t)
    x0 = torch.randn(64, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 5, generator=g, dtype=torch.float64)
    pc = path_coefficients(p, sigma)
    x = x0 + sigma[:, None] * eps
    recovered = q.to_x0(q.target(x0, eps, pc), x, pc)
    torch.testing.assert_close(recovered, x0, rtol=1e-8, atol=1e-8 * (1 + float(sigma.max())))


class _Probe(torch.nn.Module):
    """A 'network' that records its inputs and returns ``sin`` of what it sees."""

    def forward(self, x, c_noise, **cond):
        self.seen = (x, c_noise)
        return torch.sin(x)


BETA_MIN, BETA_MAX = 0.1, 20.0


def _vp_coefficients(name, sigma, sigma_data):
    """``(c_skip, c_out)`` of each parameterization under the linear VP process, written out in sigma-space:
    ``alpha = 1 / sqrt(1 + sigma^2)``, ``sigma_t = sigma alpha``, and for ``velocity`` (``u = alpha' x0 + sigma_t'
    eps``), ``x0 = x / (1 + sigma^2) - 2 sigma^2 / (beta(t) sqrt(1 + sigma^2)) u`` with ``beta(t) = beta_min + t
    (beta_max - beta_min)`` at the ``t`` where ``log(1 + sigma^2) = beta_min t + (beta_max - beta_min) t^2 / 2``."""
    root = torch.sqrt(1 + sigma**2)
    one, zero = torch.ones_like(sigma), torch.zeros_like(sigma)
    db = BETA_MAX - BETA_MIN
    t = (-BETA_MIN + torch.sqrt(BETA_MIN**2 + 2 * db * torch.log1p(sigma**2))) / db
    beta = BETA_MIN + db * t
    sd2 = sigma_data**2
    return {
        "eps": (one, -sigma),  # x0 = x - sigma eps
        "x0": (zero, one),
        "v": (1 / (1 + sigma**2), -sigma / root),  # x0 = alpha x_t - sigma_t v, x_t = alpha x
        "velocity": (1 / (1 + sigma**2), -2 * sigma**2 / (beta * root)),
        "score": (one, sigma**2 / root),  # x0 = (x_t + sigma_t^2 score) / alpha
        "edm": (sd2 / (sigma**2 + sd2), sigma * sigma_data / torch.sqrt(sigma**2 + sd2)),  # Karras et al., Table 1
    }[name]


@pytest.mark.parametrize("param", sorted(PARAMETERIZATIONS))
def test_denoiser_wrapper(param):
    """D(x, sigma) = c_skip x + c_out F(x / sqrt(sigma^2 + sigma_data^2), log(sigma) / 4), with the coefficients
    written out independently of the module (float64)."""
    from unidm.processes import VPLinear

    sigma_data = 0.5
    net = _Probe()
    D = Denoiser(net, VPLinear(BETA_MIN, BETA_MAX), PARAMETERIZATIONS[param](sigma_data=sigma_data)).double()
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.logspace(-2, 1, 8, dtype=torch.float64)
    out = D(x, sigma)
    net_in = x / torch.sqrt(sigma**2 + sigma_data**2)[:, None]
    torch.testing.assert_close(net.seen[0], net_in, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(net.seen[1], torch.log(sigma) / 4, rtol=1e-12, atol=1e-14)
    c_skip, c_out = _vp_coefficients(param, sigma, sigma_data)
    torch.testing.assert_close(out, c_skip[:, None] * x + c_out[:, None] * torch.sin(net_in), rtol=1e-9, atol=1e-12)
    # scalar sigma broadcasts, and equals the same sigma given per example
    torch.testing.assert_close(D(x, 0.3), D(x, torch.full((8,), 0.3, dtype=torch.float64)), rtol=0, atol=0)
