"""Guided sampling from the command line: ``unidm sample DIR --class K --guidance cfg|classifier --scale W``, and
autoguidance by a weaker version of the model, ``unidm sample DIR --guidance auto --guide DIR/state/step_N --scale W``.

The noise-conditional classifier is trained like any run (``unidm train digits-classifier --out runs/clf``, family
``classifier``); this module turns a loaded run and the flags into the denoiser ``generate`` should use.

The lead wires this into ``unidm/cli.py`` as::

    # build_parser, after the other `sample` arguments:
    guidance.add_sample_arguments(sp)
    # cmd_sample, once the run is loaded, then **extra into every run.model.generate(...) call:
    extra = guidance.generate_options(run, args)
"""

from __future__ import annotations

import argparse
import math
import warnings

import torch

from ..denoiser import DenoiserFn
from ..guidance import AutoGuidance, ClassifierFreeGuidance, ClassifierGuidance
from ..methods import DenoisingModel

__all__ = ["GUIDANCE", "guided_denoiser_for", "load_classifier", "load_guide", "add_sample_arguments",
           "prior_labels", "generate_options"]

#: the values of ``--guidance``
GUIDANCE = ("cfg", "classifier", "auto")


def load_classifier(path: str, device: str | torch.device = "cpu"):
    """The EMA weights of a ``family="classifier"`` run folder, as a :class:`NoisyClassifier` in eval mode."""
    from ..methods.classifier import NoisyClassifier
    from ..run import load_run

    run = load_run(path, device=device)
    if not isinstance(run.model, NoisyClassifier):
        raise ValueError(f"--classifier {path} is a {run.config.family!r} run, not a noise-conditional classifier "
                         "(train one with e.g. `unidm train digits-classifier --out DIR`)")
    return run


def load_guide(run, path: str) -> DenoiserFn:
    """The weaker model for autoguidance: a run folder (its EMA weights) or one of ``run``'s own checkpoint
    folders ``DIR/state/step_N`` (its EMA weights at that step), as a denoiser of the same data shape."""
    import copy
    import os

    from ..run import load_run, load_weights
    from ..train.checkpoint import load_checkpoint

    if os.path.isfile(os.path.join(path, "config.json")):
        guide = load_run(path, device=run.model.device).model
    elif os.path.isfile(os.path.join(path, "state.json")):
        guide = copy.deepcopy(run.model)
        load_weights(guide, load_checkpoint(path, device=run.model.device).ema, path, f"the model of {run.path}")
    else:
        raise ValueError(f"--guide {path} is neither a run folder (config.json) nor a checkpoint folder (state.json, "
                         "e.g. RUN/state/step_00001000)")
    if not isinstance(guide, DenoisingModel):
        raise ValueError(f"--guide {path} is a {type(guide).family!r} model, not a denoising (diffusion/flow) model")
    if guide.data_shape != run.model.data_shape:
        raise ValueError(f"--guide {path} models data of shape {tuple(guide.data_shape)}, the run "
                         f"{tuple(run.model.data_shape)}")
    guide.eval()
    return guide.denoiser


def guided_denoiser_for(run, guidance: str, scale: float, classifier_dir: str | None = None,
                        sigma_lo: float = 0.0, sigma_hi: float = math.inf, rescale: float = 0.0,
                        guide_dir: str | None = None) -> DenoiserFn:
    """The guided denoiser of a loaded Gaussian ``run`` (:func:`unidm.run.load_run`).

    Args:
        guidance: ``"cfg"`` (the run must be class-conditional with label dropout) or ``"classifier"`` (the
            run's own unconditional prediction, i.e. its null label if it is conditional, plus the gradient of the
            classifier in ``classifier_dir``) or ``"auto"`` (autoguidance by the weaker model in ``guide_dir``, see
            :func:`load_guide`; no class needed).
        scale: the guidance weight ``w`` (0 unconditional, 1 conditional; see :mod:`unidm.guidance`).
        sigma_lo, sigma_hi: the guidance interval; ``rescale``: CFG rescale ``phi`` (cfg only).

    Returns a callable ``D(x, sigma, class_labels=...)`` to pass as ``run.model.generate(..., denoiser=D,
    class_labels=K)``.
    """
    model = run.model
    if not isinstance(model, DenoisingModel):
        raise ValueError(f"guidance needs a denoising (diffusion/flow) run; {run.path} is family "
                         f"{run.config.family!r}")
    base, num_classes, label_dropout = model.denoiser, model.num_classes, model.label_dropout
    if guidance == "auto":
        if guide_dir is None:
            raise ValueError("--guidance auto needs --guide DIR (a weaker run, or a checkpoint folder "
                             "RUN/state/step_N of this one)")
        if rescale:
            raise ValueError("--rescale applies to classifier-free guidance only")
        return AutoGuidance(base, load_guide(run, guide_dir), scale, sigma_lo, sigma_hi)
    if guidance == "cfg":
        if num_classes == 0:
            raise ValueError(f"--guidance cfg needs a class-conditional run trained with label dropout; {run.path} "
                             "is unconditional (train with method.conditional=true method.label_dropout=0.1, or use "
                             "--guidance classifier --classifier DIR)")
        if label_dropout <= 0:
            raise ValueError(f"--guidance cfg: {run.path} was trained without label dropout, so its null label "
                             "(the unconditional model) was never trained; retrain with method.label_dropout=0.1")
        return ClassifierFreeGuidance(base, scale, sigma_lo, sigma_hi, rescale=rescale, null_label=num_classes)
    if guidance == "classifier":
        if classifier_dir is None:
            raise ValueError("--guidance classifier needs --classifier DIR (a run trained with family=classifier)")
        if rescale:
            raise ValueError("--rescale applies to classifier-free guidance only")
        note = getattr(model.process, "kernel_note", None)  # a run trained with a coupling (GaussianDiffusion)
        if note:
            raise ValueError(f"--guidance classifier adds sigma^2 grad log p(y | x) to D (Tweedie's formula), but the "
                             f"process of {run.path} {note}")
        clf_run = load_classifier(classifier_dir, device=model.device)
        clf = clf_run.model
        if clf.data_shape != model.data_shape:
            raise ValueError(f"classifier {classifier_dir} was trained on data of shape {clf.data_shape}, "
                             f"the model on {model.data_shape}")
        if num_classes and clf.num_classes != num_classes:
            raise ValueError(f"classifier has {clf.num_classes} classes, the model {num_classes}")
        if clf_run.config.data.get("name") != run.config.data.get("name"):
            warnings.warn(f"classifier trained on {clf_run.config.data.get('name')!r}, model on "
                          f"{run.config.data.get('name')!r}", stacklevel=2)
        if num_classes and label_dropout <= 0:
            raise ValueError(f"{run.path} is class-conditional without label dropout, so it has no unconditional "
                             "prediction for classifier guidance to start from; use --guidance cfg or a model "
                             "trained with method.label_dropout > 0")
        return ClassifierGuidance(base, clf, scale, sigma_lo, sigma_hi)
    raise ValueError(f"unknown guidance {guidance!r}; valid: {', '.join(GUIDANCE)}")


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``unidm sample`` flags of conditional and guided sampling."""
    parser.add_argument("--class", dest="class_label", type=int, metavar="K",
                        help="draw samples of class K (a conditional run alone: the conditional model, w = 1)")
    parser.add_argument("--null-label", action="store_true",
                        help="a conditional run: sample its unconditional model (the null label learned with label "
                             "dropout) instead of labels with the training split's class frequencies")
    parser.add_argument("--guidance", choices=GUIDANCE,
                        help="cfg (classifier-free) or classifier, both with --class; auto (autoguidance, --guide)")
    parser.add_argument("--guide", metavar="DIR", help="weaker model for --guidance auto: a run folder or a "
                                                       "checkpoint folder RUN/state/step_N")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="guidance weight w: 0 unconditional, 1 conditional, >1 stronger (Ho & Salimans' "
                             "w is W - 1)")
    parser.add_argument("--classifier", metavar="DIR", help="noise-conditional classifier run (--guidance classifier)")
    parser.add_argument("--sigma-lo", type=float, default=0.0, help="guidance interval, lower sigma")
    parser.add_argument("--sigma-hi", type=float, default=math.inf, help="guidance interval, upper sigma")
    parser.add_argument("--rescale", type=float, default=0.0, help="CFG rescale phi in [0, 1] (Lin et al. 2024)")


def prior_labels(model, data, seeds, args: argparse.Namespace | None = None) -> dict:
    """``{"class_labels": [len(seeds)]}`` for a class-conditional ``model`` sampled without ``--class``: one label
    per seed, with ``data``'s training class frequencies, stratified (:meth:`unidm.data.Dataset.draw_labels`), so the
    samples follow ``p(x) = sum_y p(y) p(x | y)``, the data distribution; ``{}`` for an unconditional model, with
    ``--class K`` (see :func:`generate_options`), with ``--null-label``, or with ``--guidance cfg/classifier``."""
    if model.num_classes == 0 or data.train_labels is None:
        return {}
    if args is not None and (getattr(args, "class_label", None) is not None or getattr(args, "null_label", False)
                             or getattr(args, "guidance", None) in ("cfg", "classifier")):
        return {}
    return {"class_labels": data.draw_labels(seeds).to(model.device)}


def generate_options(run, args: argparse.Namespace) -> dict:
    """``{"class_labels": K, "denoiser": D}`` (or ``{}``) for ``run.model.generate`` from the sample flags."""
    k = getattr(args, "class_label", None)
    guidance = getattr(args, "guidance", None)
    if getattr(args, "guide", None) and guidance != "auto":
        raise ValueError("--guide is used with --guidance auto")
    if guidance == "auto":
        opts = {"denoiser": guided_denoiser_for(run, "auto", args.scale, sigma_lo=args.sigma_lo,
                                                sigma_hi=args.sigma_hi, rescale=args.rescale, guide_dir=args.guide)}
        if k is not None:  # a conditional run: both models see the class
            opts.update(generate_options(run, argparse.Namespace(class_label=k)))
        return opts
    if k is None:
        if guidance is not None:
            raise ValueError("--guidance needs --class K (the class to guide towards)")
        if getattr(args, "classifier", None):
            raise ValueError("--classifier is used with --class K --guidance classifier")
        return {}
    num_classes = run.model.num_classes
    if guidance is None:
        if num_classes == 0:
            raise ValueError(f"--class: {run.path} is unconditional; use --guidance classifier --classifier DIR")
        if not 0 <= k < num_classes:
            raise ValueError(f"--class {k} is out of range: the run has classes 0..{num_classes - 1}")
        return {"class_labels": k}
    opts = {"class_labels": k, "denoiser": guided_denoiser_for(run, guidance, args.scale, args.classifier,
                                                               args.sigma_lo, args.sigma_hi, args.rescale)}
    guided = opts["denoiser"]
    limit = num_classes or (guided.classifier.num_classes if isinstance(guided, ClassifierGuidance) else 0)
    if limit and not 0 <= k < limit:
        raise ValueError(f"--class {k} is out of range: classes are 0..{limit - 1}")
    return opts
