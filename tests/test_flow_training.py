"""Flow-matching training (issue 10): SD3's time densities against their exact CDFs (Kolmogorov–Smirnov, on the
rectified flow and through τ = σ/(s + σ) on another schedule), its loss weights and loss against diffusers'
``compute_loss_weighting_for_sd3`` and train_dreambooth_sd3's formula, the exact denoiser still the minimiser,
``unisde train --schedule rectified_flow --prediction_type flow_prediction`` on one CPU and on 2 gloo processes, and
the exported scheduler's lossless round trip through ``FlowMatchEulerDiscreteScheduler``.

The worker of the 2-process test runs as a script under torchrun (``python THIS_FILE OUT``).
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import unisde
from unisde.training import DenoisingScoreMatching, make_objective, output_loss_weight, sample_time
from unisde.training.config import resolve_schedule
from unisde.training.objectives import WEIGHTING_SCHEMES, flow_noise_level, sample_flow_noise_level

N_KS = 20000
KS_CRITICAL = 1.95  # √n · D_n above this has probability < 0.1 % under the null (Kolmogorov distribution)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------- exact CDFs
def _unshift(tau, shift):
    """Inverse of SD3's shift y = shift·x/(1 + (shift − 1)x): x = y/(shift − (shift − 1)y)."""
    return tau / (shift - (shift - 1) * tau)


def _mode_map(u, c):
    return 1 - u - c * (np.cos(np.pi * u / 2) ** 2 - 1 + u)


def exact_cdf(distribution, tau, *, logit_mean=0.0, logit_std=1.0, mode_scale=1.29, shift=1.0):
    """P(τ ≤ x) from the paper's definitions (Esser et al. 2024, §3.1), written here independently of unisde."""
    from scipy import optimize, stats

    x = _unshift(np.asarray(tau, np.float64), shift)
    if distribution == "uniform_tau":
        return np.clip(x, 0, 1)
    if distribution == "logit_normal":
        with np.errstate(divide="ignore"):
            return stats.norm.cdf((np.log(x) - np.log1p(-x) - logit_mean) / logit_std)
    # mode: τ = f(u) with f decreasing from 1 to 0, so P(f(U) ≤ x) = P(U ≥ f⁻¹(x)) = 1 − f⁻¹(x)
    out = np.empty_like(x)
    for i, xi in enumerate(x.flat):
        out.flat[i] = 1.0 - (
            1.0
            if xi <= 0
            else 0.0
            if xi >= 1
            else optimize.brentq(lambda u: _mode_map(u, mode_scale) - xi, 0.0, 1.0, xtol=1e-14)
        )
    return out


CASES = [
    ("uniform_tau", {}),
    ("logit_normal", {}),
    ("logit_normal", dict(logit_mean=0.7, logit_std=0.6)),
    ("mode", {}),
    ("mode", dict(mode_scale=-0.8)),
    ("logit_normal", dict(shift=3.0)),
    ("mode", dict(shift=0.5)),
]


def _ks(sample, cdf):
    from scipy import stats

    return stats.kstest(np.sort(sample), cdf).statistic * math.sqrt(len(sample))


@pytest.mark.parametrize("distribution,options", CASES)
def test_rectified_flow_times_follow_the_sd3_density(distribution, options):
    """On the rectified flow t = τ: the drawn times pass a KS test against the exact CDF at the 0.1 % level, and a
    wrong parameter (another logit_mean, mode_scale or shift) fails it, so the test can fail."""
    schedule = resolve_schedule("rectified_flow")
    t = sample_time(distribution, schedule, N_KS, torch.Generator().manual_seed(11), t_min=0.0, **options).numpy()
    assert t.min() >= 0 and t.max() <= 1
    assert _ks(t, lambda x: exact_cdf(distribution, x, **options)) < KS_CRITICAL
    wrong = {**options, "shift": options.get("shift", 1.0) * 1.3}
    assert _ks(t, lambda x: exact_cdf(distribution, x, **wrong)) > 2 * KS_CRITICAL


@pytest.mark.parametrize("name", ["vp-linear", "ddpm-linear", "edm"])
def test_other_schedules_draw_the_same_noise_levels(name):
    """On any schedule the density is stated in τ = σ/(s + σ): mapping the drawn t back to τ gives the formula's
    distribution (the noise levels a rectified flow would see; the schedule's range clamps only far tails)."""
    schedule = resolve_schedule(name)
    for distribution, options in [("logit_normal", {}), ("mode", {})]:
        t = sample_time(distribution, schedule, N_KS, torch.Generator().manual_seed(3), t_min=0.0, **options)
        tau = flow_noise_level(schedule, t).numpy()
        assert _ks(tau, lambda x: exact_cdf(distribution, x, **options)) < KS_CRITICAL, (name, distribution)


def test_logit_normal_in_tau_is_edm_lognormal():
    """logit τ = ln σ̃, so logit-normal(m, s) is EDM's ln σ̃ ~ N(m, s²): two-sample KS on the EDM schedule."""
    from scipy import stats

    schedule = resolve_schedule("edm")
    a = sample_time(
        "logit_normal", schedule, N_KS, torch.Generator().manual_seed(1), t_min=0.0, logit_mean=-1.2, logit_std=1.2
    )
    b = sample_time("lognormal", schedule, N_KS, torch.Generator().manual_seed(2), t_min=0.0)
    assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3


def test_densities_match_diffusers_sampling():
    """diffusers' ``compute_density_for_timestep_sampling`` draws the same laws (two-sample KS) for the
    symmetric cases, in which its reversed indexing of the timestep table does not matter."""
    from diffusers.training_utils import compute_density_for_timestep_sampling
    from scipy import stats

    for scheme, kwargs in [
        ("logit_normal", dict(logit_mean=0.0, logit_std=1.0)),
        ("mode", dict(mode_scale=1.29)),
        ("none", {}),
    ]:
        ref = (
            compute_density_for_timestep_sampling(
                scheme,
                N_KS,
                generator=torch.Generator().manual_seed(4),
                **{"logit_mean": None, "logit_std": None, "mode_scale": None, **kwargs},
            )
            .double()
            .numpy()
        )
        dist = WEIGHTING_SCHEMES[scheme][0]
        ours = sample_flow_noise_level(dist, N_KS, torch.Generator().manual_seed(5), **kwargs).numpy()
        assert stats.ks_2samp(ours, ref).pvalue > 1e-3, scheme


def test_weights_and_loss_match_diffusers_sd3():
    """With flow prediction on the rectified flow the output weight is ``compute_loss_weighting_for_sd3`` (σ = t),
    and the loss is train_dreambooth_sd3's mean(w · (model(x_σ, 1000σ) − (ε − x0))²)."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    schedule, flow = resolve_schedule("rectified_flow"), unisde.get_parameterization("flow_prediction")
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    for scheme, (_, weighting) in WEIGHTING_SCHEMES.items():
        ours = output_loss_weight(weighting, schedule, flow, t)
        ref = compute_loss_weighting_for_sd3(scheme, sigmas=t).double()
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=0, msg=scheme)  # diffusers casts sigma_sqrt to float32
    torch.testing.assert_close(output_loss_weight("flow", schedule, flow, t), torch.ones_like(t), rtol=1e-12, atol=0)

    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(16, 1, 4, 4, generator=gen), torch.randn(16, 1, 4, 4, generator=gen)
    sigmas = torch.rand(16, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    model = lambda x, ts: torch.sin(x) * (1 + ts.reshape(-1, 1, 1, 1) / 1000)  # noqa: E731
    for scheme in ("logit_normal", "cosmap", "sigma_sqrt"):
        obj = make_objective("rectified_flow", "flow", WEIGHTING_SCHEMES[scheme][1], WEIGHTING_SCHEMES[scheme][0])
        got = obj.loss(model, x0, t=sigmas, noise=noise)
        s = sigmas.float().reshape(-1, 1, 1, 1)
        pred = model((1 - s) * x0 + s * noise, sigmas.float() * 1000)
        w = compute_loss_weighting_for_sd3(scheme, sigmas=s)
        want = (w * (pred - (noise - x0)) ** 2).reshape(16, -1).mean(1).mean()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=scheme)


@pytest.mark.parametrize(
    "name,param",
    [("rectified_flow", "flow_prediction"), ("rectified_flow", "epsilon"), ("vp-linear", "flow_prediction")],
)
def test_exact_denoiser_minimises_the_flow_weightings(name, param):
    """E[dL/dδ] = 0 at the exact Gaussian denoiser (within 5 standard errors) under every SD3 scheme; a denoiser
    off by 0.3 is detected, so the test can fail."""
    schedule = resolve_schedule(name)
    gen = torch.Generator().manual_seed(7)
    n, mu, c = 4000, 0.3, 0.8
    for scheme, (dist, weighting) in WEIGHTING_SCHEMES.items():
        obj = DenoisingScoreMatching(schedule, unisde.get_parameterization(param), weighting, dist, t_min=0.02)
        t = obj.sample_time(n, gen).clamp(0.02, 0.98)
        x0 = mu + c * torch.randn(n, 1, 2, 2, generator=gen, dtype=torch.float64)
        noise = torch.randn(n, 1, 2, 2, generator=gen, dtype=torch.float64)
        x_t = schedule.add_noise(x0, noise, t)
        s, sigma = schedule.s(t).reshape(-1, 1, 1, 1), schedule.sigma(t).reshape(-1, 1, 1, 1)
        exact = mu + s * c * c / (s * s * c * c + sigma * sigma) * (x_t - s * mu)
        k = torch.tanh(x_t) + 0.5
        p = obj.parameterization

        def grad(shift):
            def model(delta):
                out = p.from_denoised(exact + shift + delta * k, x_t, t, schedule)
                return lambda model_input, timestep: out

            plus = obj.loss(model(1.0), x0, t=t, noise=noise, reduction="none")
            minus = obj.loss(model(-1.0), x0, t=t, noise=noise, reduction="none")
            return (plus - minus) / 2

        g, bad = grad(0.0), grad(0.3)
        assert abs(g.mean()) < 5 * g.std() / math.sqrt(n), (name, param, scheme)
        assert abs(bad.mean()) > 5 * bad.std() / math.sqrt(n), (name, param, scheme, "test cannot fail")


# ---------------------------------------------------------------------------------------------- unisde train
def _args(out, **kw):
    from unisde.training.loop import default_args

    base = dict(
        output_dir=str(out),
        train_batch_size=8,
        max_train_steps=3,
        checkpointing_steps=3,
        block_out_channels="8,16",
        norm_num_groups=4,
        attention_levels="none",
        lr_warmup_steps=0,
        logger="none",
        no_progress=True,
        learning_rate=1e-3,
        schedule="rectified_flow",
        prediction_type="flow_prediction",
    )
    base.update(kw)
    return default_args(**base)


def test_train_rectified_flow_exports_a_flowmatch_compatible_pipeline(tmp_path):
    """One CPU, a few steps with SD3's logit-normal scheme and shift 3; the exported scheduler config converts to a
    native FlowMatchEulerDiscreteScheduler with the native timesteps/sigmas of that shift, and back to a
    UnifiedScheduler that samples exactly as the exported one (and as FlowMatch Euler itself)."""
    from diffusers import DDPMPipeline, FlowMatchEulerDiscreteScheduler

    from unisde.diffusers.scheduler import UnifiedScheduler
    from unisde.training.loop import train

    out = tmp_path / "flow"
    result = train(_args(out, weighting_scheme="logit_normal", shift=3.0, use_ema=True))
    assert result.global_step == 3 and all(np.isfinite(result.losses))
    run = json.loads((out / "unisde_run.json").read_text())
    assert "--weighting_scheme logit_normal" in run["command"] and "--schedule rectified_flow" in run["command"]
    assert run["fingerprint"]["noise_distribution"] == "logit_normal"
    assert run["fingerprint"]["noise_distribution_options"]["shift"] == 3.0
    card = (out / "README.md").read_text()
    assert "logit_normal (logit_mean=0.0, logit_std=1.0, shift=3.0" in card and "weighting_scheme logit_normal" in card

    pipe = unisde.load_pipeline(str(out))
    cfg = pipe.scheduler.config
    assert cfg.sampler == "ddim" and cfg.time_grid == "flow_match" and cfg.sigmas_convention == "flow"
    assert cfg.schedule["name"] == "rectified-flow" and cfg.parameterization == "flow_prediction" and cfg.shift == 3.0

    native = FlowMatchEulerDiscreteScheduler(shift=3.0)
    back = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    assert {k: back.config[k] for k in native.config if not k.startswith("_")} == {
        k: v for k, v in native.config.items() if not k.startswith("_")
    }
    for n in (4, 10, 28):
        native.set_timesteps(n)
        back.set_timesteps(n)
        assert torch.equal(back.timesteps, native.timesteps) and torch.equal(back.sigmas, native.sigmas)
        pipe.scheduler.set_timesteps(n)
        torch.testing.assert_close(pipe.scheduler.timesteps.double(), native.timesteps.double(), rtol=0, atol=1e-4)
        torch.testing.assert_close(pipe.scheduler.sigmas.double(), native.sigmas.double(), rtol=0, atol=1e-7)

    again = UnifiedScheduler.from_config(back.config)
    unet = pipe.unet.eval()

    def images(scheduler):
        p = DDPMPipeline(unet=unet, scheduler=scheduler)
        p.set_progress_bar_config(disable=True)
        return p(
            batch_size=4, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="np"
        ).images

    exported = images(pipe.scheduler)
    assert np.isfinite(exported).all()
    np.testing.assert_array_equal(images(again), exported)
    np.testing.assert_allclose(images(FlowMatchEulerDiscreteScheduler.from_config(cfg)), exported, rtol=0, atol=2e-5)

    # every sampler runs on the flow checkpoint and gives finite images
    for sampler in unisde.list_samplers():
        if sampler in ("inverse", "ddim_inverse"):
            continue
        p = unisde.load_pipeline(str(out), sampler=sampler)
        p.set_progress_bar_config(disable=True)
        img = p(
            batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
        ).images
        assert np.isfinite(img).all(), sampler


def test_train_flow_without_scheme_and_other_schedules(tmp_path):
    """Without --weighting_scheme a rectified flow trains as before (uniform t, flow MSE); the SD3 schemes also train
    a VP model (density and weight in τ), whose export keeps the unisde schedule key."""
    from unisde.training.loop import train

    r = train(_args(tmp_path / "plain", max_train_steps=2, checkpointing_steps=2, schedule="rectified-flow"))
    assert r.global_step == 2 and all(np.isfinite(r.losses))
    r = train(
        _args(
            tmp_path / "vp",
            max_train_steps=2,
            checkpointing_steps=2,
            schedule="vp-linear",
            prediction_type="epsilon",
            weighting_scheme="cosmap",
        )
    )
    assert r.global_step == 2 and all(np.isfinite(r.losses))
    cfg = json.loads((tmp_path / "vp" / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["schedule"]["name"] == "vp-linear" and cfg["time_grid"] is None


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            dict(weighting_scheme="logit_normal", noise_distribution="uniform_t"),
            "--weighting_scheme logit_normal sets both",
        ),
        (dict(weighting_scheme="cosmap", loss_weighting="x0"), "drop --noise_distribution"),
        (dict(weighting_scheme="sd3"), "--weighting_scheme 'sd3'; valid choices: logit_normal, mode"),
        (dict(weighting_scheme="mode", mode_scale=2.0), r"mode_scale must lie in \[-1, 2/\(π − 2\)"),
        (dict(weighting_scheme="logit_normal", logit_std=0.0), "logit_std > 0"),
        (dict(weighting_scheme="logit_normal", shift=-1.0), "shift must be a finite number > 0"),
        (dict(noise_distribution="uniform_t", shift=3.0), "--shift 3.0 shifts the flow noise levels"),
        (
            dict(schedule="vp-linear", prediction_type="epsilon", weighting_scheme="none", shift=3.0),
            "needs --schedule rectified_flow --prediction_type flow_prediction",
        ),
        (dict(noise_distribution="logit-normall"), "unknown noise distribution 'logit-normall'"),
    ],
)
def test_bad_flow_options_are_refused_before_training(tmp_path, overrides, message):
    from unisde.training.loop import validate_args

    with pytest.raises(ValueError, match=message):
        validate_args(_args(tmp_path / "x", **overrides))
    assert not (tmp_path / "x").exists()


def test_sample_flow_noise_level_refuses_non_flow_distributions():
    with pytest.raises(ValueError, match="unknown flow noise distribution 'uniform_t'"):
        sample_flow_noise_level("uniform_t", 4)


# ---------------------------------------------------------------------------------------------- 2 processes
WORKER_DEADLINE_S = 200


def _worker(out: str) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(WORKER_DEADLINE_S, exit=True)
    from unisde.training.loop import train

    result = train(
        _args(out, train_batch_size=4, max_train_steps=2, checkpointing_steps=2, cpu=True, weighting_scheme="mode")
    )
    acc = result.accelerator
    flat = torch.cat([p.detach().flatten() for p in acc.unwrap_model(result.model).parameters()])
    gathered = acc.gather(flat[None]).reshape(acc.num_processes, -1)
    times = acc.gather(torch.rand(1, 3))  # per-rank RNG streams (the training times are drawn from them)
    if acc.is_main_process:
        with open(os.path.join(out, "report.json"), "w") as fh:
            json.dump(
                {
                    "num_processes": acc.num_processes,
                    "global_step": result.global_step,
                    "ranks_identical": bool((gathered == gathered[0]).all()),
                    "rng_differs": bool(not torch.equal(times[0], times[1])),
                    "losses": result.losses,
                },
                fh,
            )
    result.finish()
    from unisde.training.loop import end_process

    end_process(0)
    raise AssertionError("end_process returned in a 2-process run")


def test_two_gloo_processes_train_a_rectified_flow(tmp_path):
    out = tmp_path / "ddp-flow"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_DEADLINE_S + 60, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["num_processes"] == 2 and report["global_step"] == 2
    assert report["ranks_identical"] and report["rng_differs"] and all(np.isfinite(report["losses"]))
    cfg = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["time_grid"] == "flow_match" and cfg["schedule"]["name"] == "rectified-flow"


if __name__ == "__main__":
    _worker(sys.argv[1])


# ---------------------------------------------------------------------------------------------- the demo
def test_demo_samples_both_bundled_checkpoints(tmp_path):
    """``unisde demo``'s runner on the two bundled checkpoints (a few images, three samplers): one table with a row
    per (checkpoint, sampler), finite distances, the inversion sampler measured by its round trip, and the flow
    checkpoint's scheduler the FlowMatch export."""
    from unisde.demo import BUNDLED_CHECKPOINTS, format_table, run_demos

    rows, bpd = run_demos(
        BUNDLED_CHECKPOINTS,
        str(tmp_path),
        num_samples=[8, 6],
        samplers=["ddim", "edm", "inverse"],
        likelihood=False,
        verbose=False,
    )
    inv = "inverse (encode real digits, decode with ddim)"
    assert [(r.checkpoint, r.label) for r in rows] == [
        ("digits-unet", "ddim"),
        ("digits-unet", "edm"),
        ("digits-unet", inv),
        ("digits-flow", "ddim"),
        ("digits-flow", "edm"),
        ("digits-flow", inv),
        ("digits-flow", "edm (view=ve)"),
    ]
    assert all(np.isfinite(r.frechet) and np.isfinite(r.floor) for r in rows)
    assert [r.num_samples for r in rows] == [8] * 3 + [6] * 4
    inverse = [r for r in rows if r.sampler == "inverse"]
    assert all(r.note and r.nfe == 2 * 30 for r in inverse)
    table = (tmp_path / "results.md").read_text()
    assert table == format_table(rows) and "| digits-flow | edm |" in table
    cfg = json.loads((tmp_path / "digits-flow" / "results.json").read_text())
    assert cfg["num_samples"] == 6 and len(cfg["rows"]) == 4
    flow_cfg = json.loads(open(os.path.join(BUNDLED_CHECKPOINTS[1], "scheduler", "scheduler_config.json")).read())
    assert flow_cfg["schedule"]["name"] == "rectified-flow" and flow_cfg["time_grid"] == "flow_match"
    assert flow_cfg["parameterization"] == "flow_prediction" and flow_cfg["shift"] == 1.0
