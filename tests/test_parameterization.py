"""Every parameterization round-trips under every process, and the denoiser wrapper obeys the contract."""

import pytest
import torch

from unidm.denoiser import Denoiser
from unidm.parameterization import PARAMETERIZATIONS, c_in, path_coefficients
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
    """A 'network' that records its inputs and returns a fixed output."""

    def forward(self, x, c_noise, **cond):
        self.seen = (x, c_noise)
        return torch.full_like(x, 0.5)


@pytest.mark.parametrize("param", sorted(PARAMETERIZATIONS))
def test_denoiser_wrapper(param):
    p = PROCESSES["vp"]()
    q = PARAMETERIZATIONS[param](sigma_data=0.5)
    net = _Probe()
    D = Denoiser(net, p, q).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    sigma = torch.logspace(-2, 1, 8, dtype=torch.float64)
    out = D(x, sigma)
    torch.testing.assert_close(net.seen[0], x * c_in(sigma, 0.5)[:, None])
    torch.testing.assert_close(net.seen[1], torch.log(sigma) / 4)
    pc = path_coefficients(p, sigma)
    c_skip, c_out = q.coefficients(pc)
    torch.testing.assert_close(out, c_skip[:, None] * x + c_out[:, None] * 0.5)
    # scalar sigma broadcasts
    assert D(x, 0.3).shape == x.shape
