"""``unidm import-diffusers FOLDER --out RUN`` and ``unidm export-diffusers RUN --out FOLDER``: diffusers model
folders to unidm runs and back, from local folders only (:mod:`unidm.interop.diffusers`).

The lead wires these into ``unidm/cli.py``'s ``build_parser``::

    sp = sub.add_parser("import-diffusers", help=..., formatter_class=fmt)
    interop.add_import_arguments(sp, positive_int)
    sp.set_defaults(fn=interop.run_import)
    sp = sub.add_parser("export-diffusers", help=..., formatter_class=fmt)
    interop.add_export_arguments(sp)
    sp.set_defaults(fn=interop.run_export)
"""

from __future__ import annotations

import argparse
import time

__all__ = ["add_import_arguments", "run_import", "add_export_arguments", "run_export"]


def add_import_arguments(parser: argparse.ArgumentParser, positive_int) -> None:
    parser.add_argument("folder", help="a local diffusers folder: a pipeline (model_index.json, unet/, scheduler/) "
                                       "or a UNet2DModel (config.json, diffusion_pytorch_model.safetensors)")
    parser.add_argument("--out", required=True, help="the new run folder (must be new or empty)")
    parser.add_argument("--data", action="append", metavar="KEY=VALUE",
                        help="the run's dataset, for eval and likelihood (repeatable; its images must have the "
                             "UNet's shape), e.g. --data name=image-folder --data path=pics/ --data image_size=32; "
                             "without it the run samples, and eval/likelihood name the folder to fill")
    parser.add_argument("--scheduler", metavar="FILE", help="the scheduler_config.json (or its folder), when it is "
                                                            "not in the model folder")
    parser.add_argument("--num-classes", type=positive_int, metavar="K",
                        help="a class-conditional UNet: its class count, num_class_embeds (the default) or "
                             "num_class_embeds - 1 (the last embedding is then the null label)")


def run_import(args: argparse.Namespace) -> int:
    from ..interop import import_diffusers

    t0 = time.perf_counter()
    run, notes = import_diffusers(args.folder, args.out, scheduler=args.scheduler, num_classes=args.num_classes,
                                  overrides=[f"data.{item}" for item in args.data or []])
    m, s = run.config.method, run.config.sample
    n_params = sum(p.numel() for p in run.model.parameters())
    classes = f", {run.model.num_classes} classes" if run.model.num_classes else ""
    print(f"imported {args.folder} -> {args.out}  (UNet2DModel, {n_params / 1e6:.3f} M parameters, image "
          f"{'x'.join(map(str, run.data.shape))}{classes}; process {m['process']}, parameterization "
          f"{m['parameterization']}; {time.perf_counter() - t0:.1f} s)")
    for note in notes:
        print(f"note: {note}")
    print(f"sample it: unidm sample {args.out} --sampler {s.sampler} --steps {s.steps} --grid {s.grid}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run folder whose network is model.arch=diffusers-unet2d")
    parser.add_argument("--out", required=True, help="the new diffusers pipeline folder (must be new or empty)")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema", help="EMA or raw weights")


def run_export(args: argparse.Namespace) -> int:
    from ..interop import export_diffusers

    result = export_diffusers(args.run, args.out, weights=args.weights)
    print(f"exported {args.run} -> {result.path}  (DDPMPipeline: unet/ in safetensors, scheduler/ "
          f"{result.scheduler_class}; DDIMPipeline loads it too)")
    for note in result.notes:
        print(f"note: {note}")
    return 0
