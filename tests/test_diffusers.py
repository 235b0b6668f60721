"""diffusers import and export (issue 23): a tiny random ``UNet2DModel`` saved to a temporary folder, read back by
unidm, checked against diffusers' own schedulers in float64, exported and loaded by ``DDPMPipeline``; bad folders
refused in one line, a pickle never opened."""

from __future__ import annotations

import json
import math
import os
import pickle
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason='diffusers is an optional extra: pip install -e ".[diffusers]"')

from unidm.cli import main  # noqa: E402
from unidm.config import RunConfig  # noqa: E402
from unidm.interop import export_diffusers, import_diffusers, load_diffusers, read_diffusers  # noqa: E402
from unidm.nn.diffusers_unet import DiffusersMissing, diffusers_module  # noqa: E402
from unidm.run import StoredData, build_model, load_run  # noqa: E402
from unidm.samplers import ddpm_grid, sample  # noqa: E402

T = 1000
UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def save_folder(path, scheduler=None, seed=0, **unet_kw):
    """A pipeline folder: model_index.json, unet/ (random weights, safetensors), scheduler/."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**{**UNET, **unet_kw})
    with torch.no_grad():  # diffusers zero-initialises some output layers; make every weight matter
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    unet.save_pretrained(os.path.join(path, "unet"), safe_serialization=True)
    scheduler = scheduler or diffusers.DDPMScheduler(num_train_timesteps=T, clip_sample=False)
    scheduler.save_pretrained(os.path.join(path, "scheduler"))
    with open(os.path.join(path, "model_index.json"), "w") as f:
        json.dump({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                   "scheduler": ["diffusers", type(scheduler).__name__]}, f)
    return str(path)


def float64_tables(scheduler, betas=None):
    """diffusers' scheduler with its betas (the linear schedule's, or ``betas``) and alphas_cumprod in float64
    (diffusers keeps them in float32)."""
    c = scheduler.config
    if betas is None:
        assert c.beta_schedule == "linear"
        betas = torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float64)
    scheduler.betas = betas.clone()
    scheduler.alphas = 1 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, 0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_folder(tmp_path_factory.mktemp("ddpm"))


@pytest.fixture(scope="module")
def run64(folder):
    run = load_diffusers(folder)
    run.model.double()
    return run


def ddim_gap(model, unet, sched, steps: int, rows: int, seed: int) -> float:
    """max |unidm ddim - DDIMScheduler's loop| from the same x_T, on DDPM's leading timesteps (float64); the grid
    is first checked to be diffusers' timesteps exactly."""
    sched.set_timesteps(steps)
    grid = ddpm_grid(model.process, steps, "leading")
    abar = sched.alphas_cumprod[sched.timesteps]
    assert torch.allclose(grid[:-1], torch.sqrt((1 - abar) / abar), rtol=1e-12, atol=0)
    x_T = torch.randn(rows, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
        ours = sample(model.denoiser, x_T * math.sqrt(1 + float(grid[0]) ** 2), grid, method="ddim")
    return float((ours - x).abs().max())


def unet64(folder):
    return diffusers.UNet2DModel.from_pretrained(os.path.join(folder, "unet"), use_safetensors=True).double().eval()


# ---------------------------------------------------------------------------------------------- the mapping
def test_imported_config(folder):
    src = read_diffusers(folder)
    cfg = src.config
    assert cfg.family == "gaussian" and cfg.model["arch"] == "diffusers-unet2d"
    assert cfg.method["process"] == "vp-discrete" and cfg.method["parameterization"] == "eps"
    assert cfg.method["process_options"] == {"beta_start": 1e-4, "beta_end": 0.02, "num_steps": T}
    assert cfg.method["sigma_data"] == cfg.model["sigma_data"] == 1.0
    assert cfg.data_info["shape"] == [1, 8, 8] and cfg.data_info["num_classes"] == 0
    assert RunConfig.from_json(cfg.to_json()).to_dict() == cfg.to_dict()


def test_every_ddpm_timestep_maps_to_itself(run64):
    """c_noise of DDPM's level k -> diffusers timestep k, for all 1000 k, from float64 and float32 c_noise."""
    net = run64.model.denoiser.net
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)
    sigma = torch.sqrt((1 - abar) / abar)
    k = torch.arange(T, dtype=torch.float64)
    assert torch.equal(net.timestep(sigma), k)
    c_noise32 = torch.log(sigma.float()) / 4  # what the Denoiser computes for float32 data
    assert torch.equal(net.timestep(torch.exp(4 * c_noise32.double())), k)
    between = torch.sqrt(sigma[:-1] * sigma[1:])  # off the grid: a fractional timestep between k and k + 1
    kb = net.timestep(between)
    assert bool(((kb > k[:-1]) & (kb < k[1:])).all())


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_against_diffusers_step(tmp_path, prediction):
    """unidm's D(x, sigma) = diffusers' pred_original_sample (DDIMScheduler.step) for eps, v and x0 models."""
    path = save_folder(tmp_path, diffusers.DDIMScheduler(num_train_timesteps=T, prediction_type=prediction,
                                                          clip_sample=False))
    run = load_diffusers(path)
    assert run.config.method["parameterization"] == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction]
    D = run.model.denoiser.double()
    unet = unet64(path)
    sched = float64_tables(diffusers.DDIMScheduler.from_pretrained(os.path.join(path, "scheduler")))
    sched.set_timesteps(10)
    x_t = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    err = 0.0
    with torch.no_grad():
        for t in (999, 500, 37, 0):
            abar = sched.alphas_cumprod[t]
            sigma = float(torch.sqrt((1 - abar) / abar))
            ref = sched.step(unet(x_t, t).sample, t, x_t).pred_original_sample
            ours = D(x_t / torch.sqrt(abar), torch.full((3,), sigma, dtype=torch.float64))
            err = max(err, float((ours - ref).abs().max()))
    assert err < 1e-8, err
    print(f"D vs {prediction} pred_original_sample, float64: max |diff| = {err:.2e}")


# --------------------------------------------------------------------------------------------- the samplers
def test_ddim_reproduces_diffusers_ddim(folder, run64):
    """unidm's ddim on DDPM's leading timesteps = DDIMScheduler's loop from the same x_T, float64."""
    n = 10
    unet = unet64(folder)
    sched = float64_tables(diffusers.DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler")))
    err = ddim_gap(run64.model, unet, sched, n, rows=4, seed=2)
    assert err < 1e-5, err
    print(f"ddim vs DDIMScheduler, 10 steps, float64: max |diff| = {err:.2e}")


def test_ddpm_reproduces_diffusers_ddpm_with_the_same_noise(folder, run64):
    """unidm's ddpm (ancestral, posterior variance) = DDPMScheduler's loop, each row's noise from one generator
    per row on both sides (both draw ``randn`` of one row's shape per step, none at the last step)."""
    n, seeds = 20, [5, 6, 7]
    unet = unet64(folder)
    sched = float64_tables(diffusers.DDPMScheduler.from_pretrained(os.path.join(folder, "scheduler")))
    sched.set_timesteps(n)
    grid = ddpm_grid(run64.model.process, n, "leading")
    x_T = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, generator=gens).prev_sample
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        ours = sample(run64.model.denoiser, x_T * math.sqrt(1 + float(grid[0]) ** 2), grid, method="ddpm",
                      generator=gens)
    err = float((ours - x).abs().max())
    assert err < 1e-5, err
    print(f"ddpm vs DDPMScheduler, 20 steps, float64: max |diff| = {err:.2e}")


def test_flow_model_reproduces_flow_match_euler(tmp_path):
    """A UNet with FlowMatchEulerDiscreteScheduler imports as process flow / velocity; unidm's ddim (Euler in
    sigma-space, the same update) on the scheduler's sigmas reproduces its loop."""
    path = save_folder(tmp_path, diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T))
    run = load_diffusers(path)
    assert (run.config.method["process"], run.config.method["parameterization"]) == ("flow", "velocity")
    unet = unet64(path)
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(os.path.join(path, "scheduler"))
    s = [0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]  # exact in float32, as diffusers keeps them
    sched.set_timesteps(sigmas=s)
    x_1 = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = x_1
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
        grid = torch.tensor([v / (1 - v) for v in s] + [0.0], dtype=torch.float64)
        ours = sample(run.model.denoiser.double(), x_1 / (1 - s[0]), grid, method="ddim")
    err = float((ours - x).abs().max())
    assert err < 1e-5, err
    print(f"ddim vs FlowMatchEulerDiscreteScheduler, 7 steps, float64: max |diff| = {err:.2e}")


def test_class_conditional(tmp_path):
    path = save_folder(tmp_path, num_class_embeds=3)
    run = load_diffusers(path)
    assert run.model.num_classes == 3 and run.config.method["conditional"] is True
    x = torch.randn(2, 1, 8, 8)
    labels = torch.tensor([0, 2])
    unet = diffusers.UNet2DModel.from_pretrained(os.path.join(path, "unet"), use_safetensors=True).eval()
    with torch.no_grad():
        abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)[499]
        sigma = float(torch.sqrt((1 - abar) / abar))
        eps = unet(x * float(torch.sqrt(abar)), 499, class_labels=labels).sample
        ours = run.model.denoiser(x, torch.full((2,), sigma), class_labels=labels)
        assert torch.allclose(ours, x - sigma * eps, atol=1e-5)
        with pytest.raises(ValueError, match="no null label"):
            run.model.generate(2, seeds=[0, 1], steps=2)  # no labels, and this UNet has no null label
        assert run.model.generate(2, seeds=[0, 1], steps=2, class_labels=1).shape == (2, 1, 8, 8)
    with_null = load_diffusers(path, num_classes=2)  # the last embedding is the null label
    assert with_null.model.num_classes == 2 and with_null.model.denoiser.net.null_label
    with pytest.raises(ValueError, match="num_class_embeds=3"):
        read_diffusers(path, num_classes=5)


# -------------------------------------------------------------------------------------- run folder and export
def test_import_then_sample_and_export_to_ddpm_pipeline(tmp_path):
    """import-diffusers -> a run folder load_run reads without data; export-diffusers -> DDPMPipeline, whose output
    equals unidm's ddpm sampling of the same run from the same per-row generators. (An x0-predicting UNet: its
    random outputs stay mostly inside the [0, 1] the pipeline clamps to, so the comparison sees real values.)"""
    folder = save_folder(tmp_path / "m", diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type="sample"))
    run_dir, exp = str(tmp_path / "run"), str(tmp_path / "exported")
    assert main(["import-diffusers", folder, "--out", run_dir]) == 0
    run = load_run(run_dir)
    assert run.data.meta.get("missing") and run.step == 0
    assert main(["sample", run_dir, "-n", "3", "--sampler", "ddim", "--steps", "5", "--grid", "ddpm-leading",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["export-diffusers", run_dir, "--out", exp]) == 0
    assert not [f for _, _, fs in os.walk(exp) for f in fs if f.endswith(".bin")]
    pipe = diffusers.DDPMPipeline.from_pretrained(exp, use_safetensors=True).to(torch.float64)
    assert pipe.scheduler.config.prediction_type == "sample" and not pipe.scheduler.config.clip_sample
    pipe.set_progress_bar_config(disable=True)
    seeds, n = [11, 12], 10
    image = pipe(batch_size=2, generator=[torch.Generator().manual_seed(s) for s in seeds], num_inference_steps=n,
                 output_type="np").images
    model = run.model.double()
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x_T = torch.stack([torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64)[0] for g in gens])
    grid = ddpm_grid(model.process, n, "leading")
    with torch.no_grad():
        x0 = sample(model.denoiser, x_T * math.sqrt(1 + float(grid[0]) ** 2), grid, method="ddpm", generator=gens)
    ours = (x0 / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert ((image > 0) & (image < 1)).mean() > 0.5  # not a comparison of clamped constants
    err = float(abs(ours - image).max())
    assert err < 1e-5, err  # diffusers keeps its alphas_cumprod in float32
    print(f"DDPMPipeline vs unidm ddpm, 10 steps: max |diff| = {err:.2e}")
    ddim = diffusers.DDIMPipeline.from_pretrained(exp, use_safetensors=True)
    ddim.set_progress_bar_config(disable=True)
    assert ddim(batch_size=1, num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 1)


def test_export_refuses_other_networks(tmp_path):
    info = {"kind": "image", "shape": [1, 8, 8], "std": 0.5, "num_classes": 0, "vocab_size": 0, "n_train": 0,
            "n_test": 0, "dtype": "float32"}
    cfg = RunConfig(family="gaussian", data={"name": "image-array", "path": str(tmp_path / "none.npy")},
                    model={"arch": "unet", "channels": 8, "channel_mult": [1], "num_blocks": 1},
                    method={"process": "vp-discrete", "parameterization": "eps"}, data_info=info)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model = build_model(cfg, StoredData.from_info("x", info, "gone"))
    from safetensors.torch import save_file
    state = model.state_dict()
    save_file({**{f"model.{k}": v for k, v in state.items()}, **{f"ema.{k}": v.clone() for k, v in state.items()}},
              str(run_dir / "model.safetensors"))
    (run_dir / "config.json").write_text(cfg.to_json())
    with pytest.raises(ValueError, match="model.arch=diffusers-unet2d.*model.arch='unet'"):
        export_diffusers(str(run_dir), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_mismatched_sigma_data(folder, tmp_path):
    run_dir = str(tmp_path / "run")
    import_diffusers(folder, run_dir)
    cfg = json.loads(open(os.path.join(run_dir, "config.json")).read())
    cfg["method"]["sigma_data"] = 0.5
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="sigma_data"):
        export_diffusers(run_dir, str(tmp_path / "out"))


# ---------------------------------------------------------------------------------------------- bad input
def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_not_a_diffusers_folder(tmp_path, capsys):
    assert "not a diffusers model folder" in _cli_error(capsys, ["import-diffusers", str(tmp_path), "--out",
                                                                 str(tmp_path / "r")])
    assert "no such folder" in _cli_error(capsys, ["import-diffusers", str(tmp_path / "nope"), "--out",
                                                   str(tmp_path / "r")])
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    assert "unsupported network class 'UNet2DConditionModel'" in _cli_error(
        capsys, ["import-diffusers", str(tmp_path), "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_unsupported_scheduler_and_schedules(tmp_path):
    path = save_folder(tmp_path / "a")
    with open(os.path.join(path, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "ScoreSdeVeScheduler"}, f)
    with pytest.raises(ValueError, match="unsupported scheduler 'ScoreSdeVeScheduler'"):
        read_diffusers(path)
    path = save_folder(tmp_path / "c", diffusers.DDPMScheduler(variance_type="learned_range"))
    with pytest.raises(ValueError, match="learned"):
        read_diffusers(path)


def test_a_pickled_weights_file_is_refused_unopened(tmp_path, capsys):
    """A .bin holding a pickle that would write a file when unpickled: refused, and the file is never written."""
    path = save_folder(tmp_path / "m")
    os.remove(os.path.join(path, "unet", "diffusion_pytorch_model.safetensors"))
    marker = tmp_path / "UNPICKLED"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(os.path.join(path, "unet", "diffusion_pytorch_model.bin"), "wb") as f:
        pickle.dump(Boom(), f)
    err = _cli_error(capsys, ["import-diffusers", path, "--out", str(tmp_path / "r")])
    assert "pickled" in err and "never unpickles" in err
    assert not marker.exists()


def test_class_conditional_without_a_class_count(tmp_path):
    path = save_folder(tmp_path, class_embed_type="timestep")
    with pytest.raises(ValueError, match="class_embed_type='timestep'.*no class count"):
        read_diffusers(path)


def test_missing_scheduler_and_busy_out(folder, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (bare / name).write_bytes(open(os.path.join(folder, "unet", name), "rb").read())
    with pytest.raises(FileNotFoundError, match="no scheduler config.*--scheduler"):
        read_diffusers(str(bare))
    src = read_diffusers(str(bare), scheduler=os.path.join(folder, "scheduler"))
    assert src.scheduler_class == "DDPMScheduler"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("mine")
    with pytest.raises(FileExistsError):
        import_diffusers(folder, str(tmp_path / "busy"))
    assert (tmp_path / "busy" / "x").read_text() == "mine"


def test_diffusers_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(DiffusersMissing, match=r'pip install -e "\.\[diffusers\]"') as e:
        diffusers_module()
    assert isinstance(e.value, ValueError)  # the CLI's one-line error, exit code 2


@pytest.mark.parametrize("schedule", ["scaled_linear", "squaredcos_cap_v2"])
def test_other_beta_schedules_import_as_explicit_betas_and_ddim_matches(tmp_path, schedule):
    """A schedule that is not linear imports as vp-discrete with diffusers' own betas (explicit ``betas``), and
    unidm's ddim on its leading timesteps reproduces DDIMScheduler's loop with those betas, float64."""
    path = save_folder(tmp_path / schedule, diffusers.DDPMScheduler(beta_schedule=schedule, clip_sample=False))
    run = load_diffusers(path)
    run.model.double()
    sched = diffusers.DDIMScheduler.from_pretrained(os.path.join(path, "scheduler"))
    betas = run.model.process.betas
    assert len(betas) == len(sched.betas)
    assert float((betas - sched.betas.double()).abs().max()) < 1e-7  # diffusers holds them in float32
    assert ddim_gap(run.model, unet64(path), float64_tables(sched, betas), 8, rows=3, seed=4) < 1e-5
