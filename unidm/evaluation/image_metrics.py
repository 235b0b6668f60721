"""Sample quality for images without any download, each metric next to its noise floor.

Features come from a small classifier trained on the dataset's own training split
(:mod:`unidm.evaluation.feature_net`). Against the held-out images:

- :func:`frechet_distance`: the Fréchet distance between Gaussians fitted to the features (Heusel et al. 2017,
  "GANs Trained by a Two Time-Scale Update Rule", eq. 6 — FID with a feature network of the data's own).
- :func:`kernel_distance`: the unbiased MMD^2 with the cubic polynomial kernel (Bińkowski et al. 2018,
  "Demystifying MMD GANs", KID, Sec. 5), averaged over subsets.
- :func:`precision_recall`: improved precision and recall with k-NN balls (Kynkäänniemi et al. 2019, Sec. 3).
- :func:`memorization`: each sample's pixel distance to its nearest training image against the same for held-out
  images (a sample much closer to the training set than real unseen images are is a copy).
- :func:`c2st`: the classifier two-sample test (Lopez-Paz & Oquab 2017, "Revisiting Classifier Two-Sample
  Tests"): the cross-validated accuracy of a small network telling generated from held-out images, both quantized
  to the data's own grey levels (``meta["levels"]``) so a continuous value alone cannot give a sample away;
  0.5 means indistinguishable.

The *floor* of each is the same quantity with an equal number of training images in place of the samples: what a
perfect generator (one that draws fresh images of the data distribution) would score at this sample size.

:func:`resampled_floor` adds, for the Fréchet distance, the score of a generator that draws fresh samples from the
training split itself (a bootstrap of it, within each class when the samples carry the training class counts):
the expected score of a model that has learned exactly what it was trained on. A model fit to the training split
shares that split's own deviation from the data distribution and adds the deviation of its fresh draw, so it cannot
be expected to score the plain floor (docs/images.md, *Two floors*).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

from .feature_net import FeatureRecipe, features, feature_net_for
from .image_plots import IMAGE_PLOTTERS, plot_image_grid, plot_trajectory

__all__ = ["frechet_distance", "resampled_floor", "kernel_distance", "precision_recall", "memorization", "c2st",
           "quantize", "evaluate_images", "IMAGE_EVALUATORS", "IMAGE_PLOTTERS", "plot_image_grid", "plot_trajectory"]


def _sqrt_trace_product(c1: Tensor, c2: Tensor) -> Tensor:
    """``tr sqrt(C1 C2)`` for symmetric PSD ``C1, C2``.

    ``C1 C2`` is similar to the symmetric PSD matrix ``M = C1^(1/2) C2 C1^(1/2)``, so its eigenvalues are those
    of ``M`` and ``tr sqrt(C1 C2) = sum_i sqrt(lambda_i(M))``. Two symmetric eigen-decompositions (``eigh``, float64)
    replace ``scipy.linalg.sqrtm(C1 @ C2)`` of the reference FID code: no complex round-off to discard, no scipy.
    """
    w, v = torch.linalg.eigh(c1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    m = root1 @ c2 @ root1
    return torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()


def frechet_distance(f1: Tensor, f2: Tensor) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))`` between feature sets ``[N1, d]`` and ``[N2, d]`` (Heusel
    et al. 2017, eq. 6; Dowson & Landau 1982), in float64.

    >>> a = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    >>> round(frechet_distance(a, a + 1), 6)  # equal covariances: only |mu1 - mu2|^2 = 3 is left
    3.0
    """
    f1, f2 = f1.double(), f2.double()
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = torch.cov(f1.T).reshape(f1.shape[1], -1), torch.cov(f2.T).reshape(f2.shape[1], -1)
    value = (mu1 - mu2).pow(2).sum() + c1.trace() + c2.trace() - 2 * _sqrt_trace_product(c1, c2)
    return float(value.clamp(min=0))


def resampled_floor(f_train: Tensor, f_test: Tensor, m: int | None = None, labels: Tensor | None = None,
                    draws: int = 400, seed: int = 0, distance=None) -> dict:
    """The distance to ``f_test`` of ``m`` training features drawn with replacement, over ``draws`` bootstraps
    (Efron 1979): ``{"mean", "std", "p95", "draws", "stratified"}``.

    This is the score of a generator that samples the training split's empirical distribution, the minimiser of the
    denoising loss, with fresh draws. With ``labels`` each class ``c`` contributes exactly ``m_c`` draws from its own
    training images, ``m_c`` its count among ``m`` stratified draws (all of them when ``m`` is the split's size), as a
    class-conditional model sampled with :meth:`unidm.data.Dataset.draw_labels` does; without, draws are i.i.d.
    For the squared distance of means, ``E |mean(T*) - mu_H|^2 = |mu_T - mu_H|^2 + sum_c (m_c/m)^2 tr(S_c) / m_c``
    (``S_c`` the biased covariance of class ``c``'s training features): the fixed split's value plus the fresh
    draw's variance, which no generator drawing fresh samples avoids. ``distance(a, b)`` defaults to
    :func:`frechet_distance`.
    """
    distance = frechet_distance if distance is None else distance
    n = len(f_train)
    m = n if m is None else int(m)
    g = torch.Generator().manual_seed(seed)
    if labels is not None:
        labels = labels.long().flatten()
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries for {n} training features")
        classes = [(labels == c).nonzero().flatten() for c in labels.unique()]
        # class counts among m stratified draws: exact when m == n, proportional (largest remainder) otherwise
        quota = torch.tensor([len(i) * m / n for i in classes])
        counts = quota.floor().long()
        counts[torch.argsort(quota - counts, descending=True)[: m - int(counts.sum())]] += 1
    values = []
    for _ in range(draws):
        if labels is None:
            idx = torch.randint(n, (m,), generator=g)
        else:
            idx = torch.cat([i[torch.randint(len(i), (int(k),), generator=g)] for i, k in zip(classes, counts)])
        values.append(distance(f_train[idx], f_test))
    v = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "p95": float(torch.quantile(v, 0.95)),
            "draws": draws, "stratified": labels is not None}


def kernel_distance(f1: Tensor, f2: Tensor, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> float:
    """KID: unbiased MMD^2 with ``k(a, b) = (a.b / d + 1)^3`` (Bińkowski et al. 2018, Sec. 5), the mean over
    ``subsets`` random subsets of ``subset_size`` (one subset of all points when both sets are smaller). Unbiased,
    so it can be slightly negative when the two sets come from one distribution."""
    f1, f2 = f1.double(), f2.double()
    d = f1.shape[1]
    m = min(len(f1), len(f2), subset_size)
    g = torch.Generator().manual_seed(seed)
    reps = 1 if m == len(f1) == len(f2) else subsets
    total = 0.0
    for _ in range(reps):
        a = f1[torch.randperm(len(f1), generator=g)[:m]] if m < len(f1) else f1
        b = f2[torch.randperm(len(f2), generator=g)[:m]] if m < len(f2) else f2
        kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
        total += float((kxx.sum() - kxx.diag().sum() + kyy.sum() - kyy.diag().sum()) / (m * (m - 1))
                       - 2 * kxy.mean())
    return total / reps


def _knn_radii(f: Tensor, k: int) -> Tensor:
    d = torch.cdist(f, f)
    return d.kthvalue(k + 1, dim=1).values  # the 0th neighbour is the point itself


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-2): each set's manifold is the union of
    balls reaching every point's k-th nearest neighbour; precision is the fraction of ``fake`` inside the real
    manifold, recall the fraction of ``real`` inside the fake one."""
    real, fake = real.double(), fake.double()
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    d = torch.cdist(fake, real)  # [n_fake, n_real]
    precision = (d <= r_real[None]).any(1).double().mean()
    recall = (d.T <= r_fake[None]).any(1).double().mean()
    return float(precision), float(recall)


def _nearest(x: Tensor, pool: Tensor, batch: int = 1024) -> Tensor:
    x, pool = x.reshape(len(x), -1).double(), pool.reshape(len(pool), -1).double()
    return torch.cat([torch.cdist(x[i:i + batch], pool).min(1).values for i in range(0, len(x), batch)])


def memorization(samples: Tensor, held_out: Tensor, train: Tensor, quantile: float = 0.05) -> dict:
    """Pixel (L2) distance of each sample to its nearest training image, against the same for held-out images.

    Returns ``median`` (samples), ``median_floor`` (held-out) and ``copies``: the fraction of samples closer to the
    training set than the ``quantile`` of held-out images are (about ``quantile`` for a generator that does not
    copy; near 1 for one that reproduces training images).
    """
    d_s, d_h = _nearest(samples, train), _nearest(held_out, train)
    threshold = torch.quantile(d_h, quantile)
    return {"median": float(d_s.median()), "median_floor": float(d_h.median()),
            "copies": float((d_s < threshold).double().mean()), "copies_floor": quantile}


def quantize(images: Tensor, levels: int) -> Tensor:
    """Round ``[-1, 1]`` images to ``levels`` equally spaced grey levels (digits: 17)."""
    q = levels - 1
    return ((images.clamp(-1, 1) + 1) / 2 * q).round() / q * 2 - 1


def c2st(a: Tensor, b: Tensor, folds: int = 5, hidden: int = 128, steps: int = 150, seed: int = 0) -> float:
    """Classifier two-sample test (Lopez-Paz & Oquab 2017, Sec. 2): the ``folds``-fold cross-validated accuracy of
    a two-hidden-layer MLP (pixels in, full-batch AdamW, weight decay, fixed seed) that tells ``a`` from ``b``
    (equal counts taken). 0.5: indistinguishable; 1.0: always told apart."""
    n = min(len(a), len(b))
    x = torch.cat([a[:n].reshape(n, -1), b[:n].reshape(n, -1)]).float()
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(2 * n, generator=g)
    correct = 0
    for f in range(folds):
        test = perm[f::folds]
        mask = torch.ones(2 * n, dtype=torch.bool)
        mask[test] = False
        train = perm[mask[perm]]
        torch.manual_seed(seed + f)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.SiLU(),
                                  torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=5e-3, weight_decay=1e-2)
        with torch.enable_grad():  # the classifier trains even when the caller samples under no_grad
            for _ in range(steps):
                loss = F.binary_cross_entropy_with_logits(net(x[train]).squeeze(1), y[train])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            correct += int(((net(x[test]).squeeze(1) > 0).float() == y[test]).sum())
    return correct / (2 * n)


def _entry(value: float, floor: float) -> dict:
    ratio = value / floor if floor > 0 else float("nan")
    return {"value": value, "floor": floor, "ratio": ratio}


def evaluate_images(samples: Tensor, data, c2st_test: bool = True, seed: int = 12345,
                    recipe: FeatureRecipe = FeatureRecipe(), stratified: bool = False) -> dict:
    """Every image metric for ``samples [N, C, H, W]`` against ``data``'s held-out split, with floors.

    The Fréchet and kernel distances compare ``m = min(len(samples), len(data.train))`` samples with the whole
    held-out split; their floor puts ``m`` training images (drawn with ``seed``) in the samples' place, so with
    ``m = len(data.train)`` (what ``unidm eval`` draws for image data) the floor is the whole training split's and
    depends on no draw. A floor from a few hundred drawn training images is itself a noisy number: for digits
    (359 held-out) it ranged 0.50-1.04 over 30 draws of 359 (mean 0.72), which made a lucky draw look like a floor
    no model could reach. The other metrics compare ``n = min(len(samples), len(data.test))`` of each.
    The Fréchet entry also holds ``resampled`` (:func:`resampled_floor`: what a generator that draws fresh samples
    from the training split scores; within each class when ``stratified``, i.e. the samples carry the training
    class counts, as a conditional model sampled with :meth:`unidm.data.Dataset.draw_labels` does) and
    ``ratio_resampled``. ``recipe`` says how the feature network is trained. Returns ``{"n", "n_frechet",
    "metrics": {name: {"value", "floor", "ratio"}}, "feature_net": {...}}``.
    """
    samples = samples.detach().float().cpu()
    n = min(len(samples), len(data.test))
    if n < 10:
        raise ValueError(f"need at least 10 samples and held-out images to evaluate, got {n}")
    if stratified and data.train_labels is None:
        raise ValueError("stratified=True needs a dataset with class labels")
    m = min(len(samples), len(data.train))
    test = data.test.float()
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:m]
    ref = data.train[idx].float()
    net = feature_net_for(data, recipe)
    f_train = features(net, data.train.float())  # once: the floor's draw and the resampled floor both use it
    f_s, f_t, f_r = features(net, samples[:m].clamp(-1, 1)), features(net, test), f_train[idx]
    resampled = resampled_floor(f_train, f_t, m, labels=data.train_labels if stratified else None, seed=seed)
    fd = frechet_distance(f_s, f_t)
    metrics = {
        "frechet": {**_entry(fd, frechet_distance(f_r, f_t)), "resampled": resampled,
                    "ratio_resampled": fd / resampled["mean"]},
        "kid": _entry(kernel_distance(f_s, f_t), kernel_distance(f_r, f_t)),
    }
    samples, test, ref, f_s, f_t, f_r = samples[:n], test[:n], ref[:n], f_s[:n], f_t[:n], f_r[:n]
    p, r = precision_recall(f_t, f_s)
    p0, r0 = precision_recall(f_t, f_r)
    metrics["precision"], metrics["recall"] = _entry(p, p0), _entry(r, r0)
    mem = memorization(samples, test, data.train.float())
    metrics["nn_train_dist"] = _entry(mem["median"], mem["median_floor"])
    metrics["copies"] = _entry(mem["copies"], mem["copies_floor"])
    if c2st_test:
        levels = int(data.meta.get("levels", 256))
        metrics["c2st"] = _entry(c2st(quantize(samples, levels), quantize(test, levels)),
                                 c2st(quantize(ref, levels), quantize(test, levels)))
    return {"n": n, "n_frechet": m, "metrics": metrics,
            "feature_net": {k: v for k, v in net.info.items() if k != "cache"}}


IMAGE_EVALUATORS = {"image": evaluate_images}
