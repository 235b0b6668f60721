"""The process's kernel hooks (``perturb``, ``prior_sample``, ``prior_log_prob``, ``gaussian_kernel``, ``data_dim``),
checked on the Gaussian processes and on a family built only from a non-Gaussian pair: the Student-t
location-scale kernel ``x = x0 + sigma z``, ``z = g / sqrt(chi2_nu / nu)`` (the kernel of PFGM++, Xu et al. 2023,
eq. 4, with ``r = sigma sqrt(nu)``). Everything against closed forms: moments of the multivariate t, its density's
normalization, the exact posterior mean under the t kernel, and the probability-flow ODE's transport of the
t-marginals (DESIGN.md, "Beyond the Gaussian kernel")."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from _checks import check_kernel_family
from unidm.guidance import AutoGuidance
from unidm.likelihood import log_likelihood
from unidm.losses import DenoisingLoss
from unidm.processes import EDM, PROCESSES, LogNormalSigma, build_process, gaussian_log_prob, takes_data_dim
from unidm.processes.gaussian import per_example
from unidm.rng import Generators, randn, seed_generators
from unidm.samplers import (GAUSSIAN_ONLY, GAUSSIAN_WHEN, check_sampler, karras_grid, prior_noise, process_of,
                            sample, solve)

torch.set_num_threads(1)
F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the test process: EDM's noise levels with a multivariate Student-t kernel ---------------------------------
def t_log_prob(x: Tensor, scale, nu: float) -> Tensor:
    """``[B]`` log density of the ``d``-variate t with ``nu`` degrees of freedom and scale ``scale`` (scalar or
    ``[B]``): ``lgamma((nu+d)/2) - lgamma(nu/2) - d/2 log(nu pi) - d log s - (nu+d)/2 log(1 + |x|^2 / (nu s^2))``."""
    flat = x.reshape(x.shape[0], -1)
    d = flat.shape[1]
    s = torch.as_tensor(scale, dtype=x.dtype)
    const = math.lgamma((nu + d) / 2) - math.lgamma(nu / 2) - d / 2 * math.log(nu * math.pi)
    return const - d * torch.log(s) - (nu + d) / 2 * torch.log1p(flat.pow(2).sum(1) / (nu * s**2))


class StudentTEDM(EDM):
    """EDM's noise levels with the kernel ``x = x0 + sigma z``, ``z`` multivariate t with ``nu`` (integer) degrees of
    freedom: ``z = g / sqrt(chi2_nu / nu)``, ``g ~ N(0, I)``, one ``chi2_nu`` per example (a sum of ``nu`` squared
    standard normals, so per-row generators keep a row's draw its own)."""

    name = "edm-t"
    gaussian_kernel = False

    def __init__(self, nu: int = 5, sigma_min: float = 0.002, sigma_max: float = 80.0, data_dim: int | None = None):
        super().__init__(sigma_min, sigma_max)
        self.nu, self.data_dim = int(nu), data_dim

    def _z(self, shape, generator: Generators, dtype, device) -> Tensor:
        g = randn(shape, generator, dtype, device)
        chi2 = randn((shape[0], self.nu), generator, dtype, device).pow(2).sum(1)
        return g / per_example(torch.sqrt(chi2 / self.nu), g)

    def perturb(self, x0, sigma, generator=None):
        return x0 + per_example(sigma, x0) * self._z(x0.shape, generator, x0.dtype, x0.device)

    def prior_sample(self, shape, sigma_max, seeds=None, generator=None, dtype=torch.float32, device="cpu"):
        if seeds is not None:
            generator = seed_generators(list(seeds))
        return (sigma_max * self._z(tuple(shape), generator, dtype, "cpu")).to(device)

    def prior_log_prob(self, x, sigma_max, prior_variance=0.0):
        return t_log_prob(x, math.sqrt(sigma_max**2 + prior_variance), self.nu)

    def config(self):
        return {**super().config(), "nu": self.nu}


class TKernelDenoiser:
    """The exact ``E[x0 | x]`` of a weighted finite set ``{x_i}`` under the t kernel: a softmax over
    ``log w_i + log t_nu(x - x_i; sigma)`` (the ``-d log sigma`` and constants cancel); ``gaussian=True`` gives the
    Gaussian kernel's softmax over ``-|x - x_i|^2 / (2 sigma^2)`` instead (the wrong posterior for t noise)."""

    def __init__(self, points: Tensor, weights: Tensor, process: StudentTEDM, gaussian: bool = False):
        self.points, self.log_w, self.process, self.gaussian = points, torch.log(weights), process, gaussian

    def logits(self, x: Tensor, sigma: Tensor) -> Tensor:
        r2 = (x[:, None, :] - self.points.to(x)[None]).pow(2).sum(-1)  # [B, K]
        s2 = sigma.reshape(-1, 1) ** 2
        nu, d = self.process.nu, x.shape[1]
        log_k = -r2 / (2 * s2) if self.gaussian else -(nu + d) / 2 * torch.log1p(r2 / (nu * s2))
        return self.log_w.to(x) + log_k

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        return torch.softmax(self.logits(x, sigma), -1) @ self.points.to(x)

    def log_prob(self, x: Tensor, sigma: float) -> Tensor:
        """``log p_sigma(x) = logsumexp_i (log w_i + log t_nu(x - x_i; sigma))``."""
        per = torch.stack([t_log_prob(x - p, sigma, self.process.nu) for p in self.points.to(x)], 1)
        return torch.logsumexp(self.log_w.to(x) + per, 1)


def _two_points(nu=5, weights=(0.3, 0.7)):
    process = StudentTEDM(nu=nu)
    points = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=F64)
    return TKernelDenoiser(points, torch.tensor(weights, dtype=F64), process)


def _radial_integral(process: StudentTEDM, d: int, scale: float, theta_max: float = math.pi / 2, n=40_001):
    """``int_{|x| < r(theta_max)} p(x) dx`` from ``prior_log_prob`` along one axis, with ``r = c tan(theta)``,
    ``c = scale sqrt(nu)`` (the integrand then vanishes smoothly at pi/2), by the trapezoid rule in theta."""
    theta = torch.linspace(0, theta_max, n, dtype=F64)[:-1] if theta_max == math.pi / 2 else \
        torch.linspace(0, theta_max, n, dtype=F64)
    c = scale * math.sqrt(process.nu)
    r = c * torch.tan(theta)
    x = torch.zeros(len(r), d, dtype=F64)
    x[:, 0] = r
    surface = 2 * math.pi ** (d / 2) / math.gamma(d / 2)
    integrand = torch.exp(process.prior_log_prob(x, scale)) * surface * r ** (d - 1) * c / torch.cos(theta) ** 2
    return float(torch.trapezoid(integrand, theta))


# ---- the Gaussian defaults ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_gaussian_hooks_are_the_gaussian_kernel(name):
    """Every built-in process: ``gaussian_kernel``; ``perturb`` is ``x0 + sigma eps`` with ``eps`` the generator's
    next normals; ``prior_sample`` is ``prior_noise`` bit for bit (same seeds, same samples as before);
    ``prior_log_prob`` is ``log N(0, (sigma_max^2 + prior_variance) I)``."""
    process = PROCESSES[name](**({"aug_dim": "inf"} if name == "pfgmpp" else {}))  # PFGM++ at D = inf is EDM
    assert process.gaussian_kernel is True
    x0 = torch.randn(6, 3, generator=_gen(0), dtype=F64)
    sigma = torch.linspace(0.1, 3.0, 6, dtype=F64)
    expected = x0 + sigma[:, None] * torch.randn(6, 3, generator=_gen(1), dtype=F64)
    assert torch.equal(process.perturb(x0, sigma, _gen(1)), expected)
    gens = seed_generators(range(6))
    assert torch.equal(process.perturb(x0, 0.5, gens)[4], x0[4] + 0.5 * torch.randn(3, generator=_gen(4), dtype=F64))
    for kw in (lambda: {"seeds": range(5)}, lambda: {"generator": _gen(3)}):
        assert torch.equal(process.prior_sample((5, 2, 3), 80.0, **kw()), prior_noise((5, 2, 3), 80.0, **kw()))
    x = torch.randn(4, 2, 3, generator=_gen(2), dtype=F64)
    normal = torch.distributions.Normal(torch.zeros((), dtype=F64), torch.tensor(math.sqrt(80.0**2 + 0.25), dtype=F64))
    torch.testing.assert_close(process.prior_log_prob(x, 80.0, 0.25), normal.log_prob(x).sum((1, 2)))


def test_prior_sample_needs_one_seed_per_row():
    with pytest.raises(ValueError, match="3 seeds for a batch of 4"):
        EDM().prior_sample((4, 2), 80.0, seeds=[0, 1, 2])


def test_data_dim_goes_only_to_processes_that_take_it():
    """The build-time convention: ``data_dim`` reaches a process whose constructor names it, never a user option."""
    registry = {**PROCESSES, "edm-t": StudentTEDM}
    assert takes_data_dim(StudentTEDM) and {n for n, c in PROCESSES.items() if takes_data_dim(c)} == {"pfgmpp"}
    assert build_process("edm-t", {"nu": 7}, data_dim=12, registry=registry).data_dim == 12
    assert build_process("edm-t", {"nu": 7}, registry=registry).data_dim is None
    assert isinstance(build_process("edm", {"sigma_max": 40.0}, data_dim=12), EDM)
    with pytest.raises(ValueError, match="data_dim"):
        build_process("edm-t", {"data_dim": 3}, data_dim=12, registry=registry)


# ---- the Student-t pair against its closed forms -----------------------------------------------------------------
def test_t_perturb_has_the_multivariate_t_moments():
    """``Cov(x - x0) = sigma^2 nu / (nu - 2) I`` and, because one ``chi2`` scales the whole row,
    ``E[z_1^2 z_2^2] = nu^2 / ((nu - 2)(nu - 4))`` (independent coordinates would give ``(nu / (nu - 2))^2``);
    per-example ``sigma`` scales each row."""
    nu, n = 12, 200_000
    process = StudentTEDM(nu=nu)
    sigma = torch.where(torch.arange(n) % 2 == 0, 0.5, 2.0).to(F64)
    x0 = torch.randn(n, 3, generator=_gen(0), dtype=F64)
    z = (process.perturb(x0, sigma, _gen(1)) - x0) / sigma[:, None]
    cov = z.T @ z / n
    var = nu / (nu - 2)
    se = math.sqrt(3 * nu**2 / ((nu - 2) * (nu - 4)) - var**2) / math.sqrt(n)  # sd of z_i^2 over sqrt(n)
    torch.testing.assert_close(torch.diagonal(cov), torch.full((3,), var, dtype=F64), rtol=0, atol=6 * se)
    assert float((cov - torch.diag(torch.diagonal(cov))).abs().max()) < 6 * math.sqrt(var**2 / n)
    cross = (z[:, 0] ** 2 * z[:, 1] ** 2)
    assert abs(float(cross.mean()) - nu**2 / ((nu - 2) * (nu - 4))) < 6 * float(cross.std()) / math.sqrt(n)
    assert float(cross.mean()) - var**2 > 6 * float(cross.std()) / math.sqrt(n)
    raw = process.perturb(x0, sigma, _gen(1)) - x0
    for s in (0.5, 2.0):
        rows = raw[sigma == s]
        assert abs(float(rows.pow(2).mean()) / (s**2 * var) - 1) < 0.03


def test_t_prior_log_prob_is_the_t_density():
    """1-D: ``torch.distributions.StudentT``. 2-D and 3-D: the density integrates to 1 (radial quadrature), and the
    mass of a ball matches the fraction of ``prior_sample`` draws inside it."""
    nu, scale = 5, 3.0
    process = StudentTEDM(nu=nu)
    x = torch.linspace(-40, 40, 101, dtype=F64).reshape(-1, 1)
    ref = torch.distributions.StudentT(torch.tensor(float(nu), dtype=F64), 0.0, torch.tensor(2.0, dtype=F64))
    torch.testing.assert_close(process.prior_log_prob(x, math.sqrt(3.0), prior_variance=1.0), ref.log_prob(x[:, 0]))
    for d in (2, 3):
        assert abs(_radial_integral(process, d, scale) - 1) < 1e-6
        n = 100_000
        draws = process.prior_sample((n, d), scale, generator=_gen(d), dtype=F64)
        radius = 1.5 * scale * math.sqrt(nu)  # theta = atan(1.5)
        inside = float((draws.norm(dim=1) < radius).to(F64).mean())
        mass = _radial_integral(process, d, scale, theta_max=math.atan(1.5))
        assert abs(inside - mass) < 5 * math.sqrt(mass * (1 - mass) / n)


def test_t_prior_sample_rows_depend_only_on_their_seed():
    process = StudentTEDM(nu=5)
    together = process.prior_sample((6, 2), 80.0, seeds=range(6), dtype=F64)
    alone = process.prior_sample((1, 2), 80.0, seeds=[4], dtype=F64)
    assert torch.equal(together[4:5], alone)


# ---- sampling through the ODE with the t kernel ------------------------------------------------------------------
def test_single_point_flows_back_to_it():
    """For one data point ``D(x, sigma) = x0`` under any kernel, so the ODE is linear in sigma,
    ``x(sigma) = x0 + (sigma / sigma_max)(x(sigma_max) - x0)``, which Heun follows exactly, landing on ``x0``."""
    process = StudentTEDM(nu=4)
    x0 = torch.tensor([[0.3, -1.2]], dtype=F64)
    D = TKernelDenoiser(x0, torch.ones(1, dtype=F64), process)
    grid = karras_grid(12, 0.002, 80.0)
    x_t = process.prior_sample((64, 2), 80.0, seeds=range(64), dtype=F64)
    res = solve(D, x_t, grid, "heun", keep_trajectory=True)
    torch.testing.assert_close(res.x, x0.expand(64, 2), rtol=0, atol=1e-12)
    for sigma, x in zip(grid[1:-1], res.trajectory[:-1]):
        torch.testing.assert_close(x, x0 + float(sigma) / 80.0 * (x_t - x0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["heun", "dpmpp_2m", "adaptive"])
def test_two_points_are_drawn_in_proportion_to_their_weights(method):
    """From ``prior_sample`` at ``sigma_max``, the ODE with the exact t-kernel denoiser lands on the two points with
    their weights 0.3 / 0.7 (within 4.5 standard errors) and on nothing else."""
    D = _two_points()
    n = 4000
    x = D.process.prior_sample((n, 2), 80.0, seeds=range(n), dtype=F64)
    opts = {"rtol": 1e-5, "atol": 1e-5} if method == "adaptive" else {}
    out = sample(D, x, karras_grid(40, 0.002, 80.0), method, **opts)
    dist = torch.cdist(out, D.points)
    assert float(dist.min(1).values.max()) < 1e-3
    share = float((dist.argmin(1) == 1).to(F64).mean())
    assert abs(share - 0.7) < 4.5 * math.sqrt(0.21 / n)


def test_ode_transports_the_t_marginal_and_the_gaussian_posterior_does_not():
    """Start from exact draws of ``p_sigma`` at ``sigma = 1`` (a point by its weight, then ``perturb``): the ODE
    with the t-kernel posterior mean recovers the weights; with the Gaussian kernel's posterior mean (the wrong
    denoiser for t noise) it does not, by many standard errors."""
    D = _two_points(nu=2, weights=(0.9, 0.1))
    n, sigma = 6000, 1.0
    which = (torch.arange(n) % 10 == 0).long()  # point 1 for one draw in ten
    x = D.process.perturb(D.points[which], torch.full((n,), sigma, dtype=F64), seed_generators(range(n)))
    grid = karras_grid(40, 0.002, sigma)
    se = math.sqrt(0.09 / n)
    share = float((torch.cdist(sample(D, x, grid, "heun"), D.points).argmin(1) == 1).to(F64).mean())
    assert abs(share - 0.1) < 4.5 * se
    wrong = TKernelDenoiser(D.points, torch.tensor([0.9, 0.1], dtype=F64), D.process, gaussian=True)
    share_wrong = float((torch.cdist(sample(wrong, x, grid, "heun"), D.points).argmin(1) == 1).to(F64).mean())
    assert abs(share_wrong - 0.1) > 9 * se


def test_ode_likelihood_uses_the_process_prior():
    """``log_likelihood`` of the t-mixture: the prior term is ``process.prior_log_prob`` (the t density, not a
    Gaussian), the exact marginal at ``sigma_max`` plus the integrated divergence gives the exact
    ``log p_{sigma_min}(x)``, and the model's own prior gets within the prior's mismatch of it."""
    D = _two_points(nu=5)
    x = torch.tensor([[-1.1, 0.2], [0.9, -0.1], [0.2, 0.3]], dtype=F64)
    s_min, s_max = 0.05, 400.0
    res = log_likelihood(D, x, sigma_min=s_min, sigma_max=s_max, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(res.prior_log_prob, D.process.prior_log_prob(res.latent, s_max))
    exact = D.log_prob(x, s_min)
    torch.testing.assert_close(D.log_prob(res.latent, s_max) + res.delta_log_prob, exact, rtol=0, atol=1e-4)
    torch.testing.assert_close(res.log_prob, exact, rtol=0, atol=2e-3)
    assert float((gaussian_log_prob(res.latent, s_max**2) - res.prior_log_prob).abs().max()) > 1.0


# ---- refusal of the Gaussian-only samplers -----------------------------------------------------------------------
@pytest.mark.parametrize("method,opts", [(m, {}) for m in sorted(GAUSSIAN_ONLY)]
                         + [(m, {o: 0.5}) for m, o in sorted(GAUSSIAN_WHEN.items())] + [("ancestral", {})])
def test_gaussian_only_samplers_are_refused(method, opts):
    """Every sampler that draws Gaussian transition noise is refused for the t process, directly, through a
    guidance wrapper, and by ``check_sampler``; the one-line message names the sampler, the process and the
    deterministic alternatives. The same samplers are accepted for a Gaussian process."""
    D = _two_points()
    x = D.process.prior_sample((4, 2), 80.0, seeds=range(4), dtype=F64)
    grid = karras_grid(8, 0.002, 80.0)
    for denoiser in (D, AutoGuidance(D, D, scale=2.0)):
        assert process_of(denoiser) is D.process
        with pytest.raises(ValueError, match=r"sampler '\w+' .*process 'edm-t'.*dpmpp_2m.*heun") as err:
            sample(denoiser, x, grid, method, generator=_gen(0), **opts)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="edm-t"):
        check_sampler(method, D.process, **opts)
    check_sampler(method, EDM(), **opts)


def test_deterministic_settings_are_accepted():
    """DDIM with ``eta = 0`` and Euler/Heun without churn are the probability-flow ODE: allowed for any kernel."""
    process = StudentTEDM()
    for method, option in GAUSSIAN_WHEN.items():
        check_sampler(method, process, **{option: 0.0})
        check_sampler(method, process)
    for method in ("euler", "heun", "midpoint", "rk4", "lms", "ipndm", "dpm_solver", "dpmpp_2m", "dpmpp_3m",
                   "unipc", "adaptive"):
        check_sampler(method, process)


# ---- the loss and the family with the t kernel -------------------------------------------------------------------
def test_loss_with_t_kernel_is_minimized_by_the_t_posterior_mean():
    """The loss draws through ``perturb``, so its minimizer is ``E[x0 | x]`` under the t kernel: with ``x0_t`` the
    t posterior mean and ``x0_g`` the Gaussian one at the same draws, ``E[loss_g - loss_t] = E[lambda
    |x0_t - x0_g|^2 / d]`` (Pythagoras: the cross term has mean zero only under the kernel ``x`` came from)."""
    D = _two_points(nu=3, weights=(0.5, 0.5))
    wrong = TKernelDenoiser(D.points, torch.tensor([0.5, 0.5], dtype=F64), D.process, gaussian=True)
    seen = {}

    def recording(x, sigma):
        seen["x"], seen["sigma"] = x, sigma
        return D(x, sigma)

    n = 40_000
    x0 = D.points[torch.arange(n) % 2]
    loss = DenoisingLoss(D.process, LogNormalSigma(p_mean=0.0, p_std=0.5), "x0")
    loss_t = loss(recording, x0, _gen(0))
    x, sigma = seen["x"], seen["sigma"]
    loss_g = loss.at_x(wrong, x0, x, sigma)
    gap = loss_g - loss_t
    expected = loss.weight(sigma) * (D(x, sigma) - wrong(x, sigma)).pow(2).mean(1)
    se = float((gap - expected).std()) / math.sqrt(n)
    assert abs(float((gap - expected).mean())) < 5 * se
    assert float(expected.mean()) > 20 * se


def test_family_with_the_t_process(monkeypatch):
    """``GaussianDiffusion`` with the t process: it receives ``data_dim``, trains through ``perturb``, draws its
    prior with ``prior_sample`` and samples with a deterministic sampler, and refuses ``ddpm`` before drawing."""
    from unidm.methods.gaussian import GaussianDiffusion
    from unidm.nn import MLP

    monkeypatch.setitem(PROCESSES, "edm-t", StudentTEDM)
    torch.manual_seed(0)
    model = GaussianDiffusion(MLP(dim=2, hidden=32, depth=2), process="edm-t", process_options={"nu": 5},
                              data_shape=(2,))
    assert isinstance(model.process, StudentTEDM) and model.process.data_dim == 2
    check_kernel_family(model)
    with pytest.raises(ValueError, match="ddpm.*edm-t"):
        model.generate(4, seeds=range(4), sampler="ddpm", steps=6)
