r"""The last Gaussian diffusers classes that converted to nothing: live parity of each twin with the real class, per
step and over the whole loop, and a refusal naming every flag a conversion does not honour.

* DPMSolverMultistepInverseScheduler → ``inverse`` around ``dpmsolver++`` (DPM-Solver++ walked upwards), and an
  encode → decode round trip with the forward DPMSolverMultistep twin on the exact Gaussian denoiser.
* UniPCMultistepScheduler(predict_x0=False) → ``unipc`` with ``predict_x0=False`` (UniPC on ε̂).
* CogVideoXDDIMScheduler / CogVideoXDPMScheduler → ``ddim`` / ``dpmsolver++`` (SDE 2M) on the SNR-shifted table.
* DDPMWuerstchenScheduler → ``ddpm`` on the ``wuerstchen-cosine`` schedule; UnCLIPScheduler → ``ddpm``;
  ScoreSdeVpScheduler → ``sde`` with ``fixed_dt`` (Euler–Maruyama, dt = −1/n).
* DPMSolverMultistep / UniPC / DPMSolverSinglestep with Karras, exponential, Beta or λ-uniform σ̃: the model is fed
  diffusers' own timesteps, bit for bit (its float32 log-table index, rounded or truncated).

Parity is max |x_unisde − x_diffusers| over the trajectory's max |x|. Where diffusers' float32 arithmetic is itself
the larger error (a step from σ̃ = 0.01 upwards, ε read at σ = 0.01, a noise-form step with x weight ≈ 40) the
comparison runs in float64 on both sides (diffusers' σ table cast to float64), where the methods agree to 1e-7 or
better, and once in float32 at the 1e-5 bound.
"""

from __future__ import annotations

import inspect
import logging
import warnings

import diffusers
import diffusers.schedulers
import pytest
import torch

from unisde.analytic import Gaussian
from unisde.scheduler import UnifiedScheduler

TOL = 1e-5  # × scale, float32
TOL64 = 1e-7  # × scale, float64 on both sides


@pytest.fixture(autouse=True)
def quiet_diffusers():
    """diffusers deprecates algorithm_type='dpmsolver' and warns on some configs; expected here."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logger.setLevel(level)


def model(x, t):
    """A smooth stand-in network of (x, t); t is an index or a time in [0, 1]."""
    tau = float(torch.as_tensor(t).reshape(-1)[0])
    return x * (0.8 + 1e-4 * tau) + 0.05 * torch.sin(3 * x + tau / 700)


def start(dtype=torch.float32, seed=1):
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def errors(ref_states, uni_states):
    """Per step max |Δ| / max |x_ref| over the trajectory."""
    scale = max(float(x.abs().max()) for x in ref_states)
    return [float((a.double() - b.double()).abs().max()) / scale for a, b in zip(ref_states, uni_states)]


def run_standard(sched, x, n, *, ref=True, float64=False, last_sigma=None, seed=3, **step_kwargs):
    """The plain ``step()`` loop over ``timesteps`` (one generator for the whole loop); every state. ``float64``:
    diffusers' σ's in float64 (so that it computes its coefficients in float64); ``last_sigma``: its last σ."""
    sched.set_timesteps(n)
    if float64 and ref:
        sched.sigmas = sched.sigmas.to(torch.float64)
    if last_sigma is not None:
        sched.sigmas[-1] = last_sigma
    g, out = torch.Generator().manual_seed(seed), []
    if "generator" in inspect.signature(sched.step).parameters:
        step_kwargs["generator"] = g
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, **step_kwargs).prev_sample
        out.append(x)
    return out


def convert(ref, sampler):
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == sampler
    return uni


# ---------------------------------------------------------------------------------------------- DPM inverse
INVERSE_CONFIGS = {
    "default": {},
    "default-20": {"n": 20},
    "order1": {"solver_order": 1},
    "order3": {"solver_order": 3},
    "heun": {"solver_type": "heun"},
    "dpmsolver": {"algorithm_type": "dpmsolver"},
    "v": {"prediction_type": "v_prediction"},
    "x0": {"prediction_type": "sample"},
    "no-lower-final": {"lower_order_final": False, "solver_order": 3},
    "euler-final": {"euler_at_final": True},
    "sd": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}


@pytest.mark.parametrize("config", INVERSE_CONFIGS.values(), ids=INVERSE_CONFIGS.keys())
def test_dpm_inverse_parity(config):
    """DPMSolverMultistepInverseScheduler walks round(linspace(0, N − 1, n + 1)) upwards from index 0 (σ̃ = 0.01):
    the converted ``inverse`` + ``dpmsolver++`` takes the same timesteps and the same samples, in float64 to 1e-7
    (8 steps; 20 for the default config)."""
    config = dict(config)
    n = config.pop("n", 8)
    ref = diffusers.DPMSolverMultistepInverseScheduler(**config)
    uni = convert(ref, "inverse")
    assert uni.sampler_options["invert"] == "dpmsolver++"
    ref_states = run_standard(ref, start(torch.float64), n, float64=True)
    uni_states = run_standard(uni, start(torch.float64), n, ref=False)
    assert torch.equal(ref.timesteps, uni.timesteps), (ref.timesteps, uni.timesteps)
    assert bool((uni.timesteps[1:] > uni.timesteps[:-1]).all())
    errs = errors(ref_states, uni_states)
    assert max(errs) <= TOL64, [f"{e:.2g}" for e in errs]


def test_dpm_inverse_float32_parity():
    """In float32 the first step (x weight σ̃_1/σ̃_0 ≈ 43 against a D weight of the same size) costs diffusers and
    unisde each ~1e-6 of the scale; the two stay within 1e-5."""
    for n in (8, 20):
        ref = diffusers.DPMSolverMultistepInverseScheduler()
        uni = convert(ref, "inverse")
        errs = errors(run_standard(ref, start(), n), run_standard(uni, start(), n, ref=False))
        assert max(errs) <= TOL, [f"{e:.2g}" for e in errs]


@pytest.mark.parametrize(
    "flag, value",
    [
        ("timestep_spacing", "leading"),
        ("timestep_spacing", "trailing"),
        ("use_karras_sigmas", True),
        ("use_exponential_sigmas", True),
        ("use_beta_sigmas", True),
        ("use_flow_sigmas", True),
        ("algorithm_type", "sde-dpmsolver++"),
        ("algorithm_type", "sde-dpmsolver"),
        ("variance_type", "learned_range"),
        ("lambda_min_clipped", -5.1),
        ("prediction_type", "flow_prediction"),
    ],
)
def test_dpm_inverse_refuses_by_name(flag, value):
    cfg = {**diffusers.DPMSolverMultistepInverseScheduler().config, flag: value}
    cfg["_class_name"] = "DPMSolverMultistepInverseScheduler"
    with pytest.raises(ValueError, match=f"DPMSolverMultistepInverseScheduler flag {flag}="):
        UnifiedScheduler.from_config(cfg)


def test_dpm_inverse_encode_then_decode_round_trip():
    """Encode data (taken as the sample at index 0) with the converted inverse scheduler, decode with the converted
    DPMSolverMultistepScheduler ending at index 0 (linspace spacing, final_sigmas_type='sigma_min': the same n + 1
    indices walked down), both through ``step()`` on the exact ε-model of Gaussian data N(μ, v I) on the table,
    E[ε | x_t] = σ (x − s μ)/(s² v + σ²) (checked against unisde.analytic.Gaussian once): the input comes back, the
    error falling by ≥ 3× per doubling of the steps (second order; the first step, 0.01 → σ̃_1, dominates)."""
    mu, var = torch.tensor([0.5, -0.3], dtype=torch.float64), 0.25
    abar = diffusers.DPMSolverMultistepInverseScheduler().alphas_cumprod.double()

    def eps_model(x, t):
        s, sigma = abar[int(t)].sqrt(), (1 - abar[int(t)]).sqrt()
        return sigma * (x - s * mu) / (s * s * var + sigma * sigma)

    data = torch.tensor([[0.1, 0.2], [0.9, -0.7], [0.5, 0.5]], dtype=torch.float64)
    enc = convert(diffusers.DPMSolverMultistepInverseScheduler(), "inverse")
    analytic = Gaussian(mu, torch.tensor(var)).as_model("epsilon", enc.noise_schedule)
    torch.testing.assert_close(analytic(data, torch.tensor(400)), eps_model(data, 400), rtol=1e-9, atol=1e-12)
    errs = []
    for n in (25, 50, 100):
        enc = convert(diffusers.DPMSolverMultistepInverseScheduler(), "inverse")
        dec = convert(
            diffusers.DPMSolverMultistepScheduler(timestep_spacing="linspace", final_sigmas_type="sigma_min"),
            "dpmsolver++",
        )
        enc.set_timesteps(n)
        dec.set_timesteps(n)
        # the same n + 1 indices: the encoder evaluates the lower n going up, the decoder the upper n going down
        assert torch.equal(enc.timesteps[1:].flip(0), dec.timesteps[1:]) and int(enc.timesteps[0]) == 0
        x = data.clone()
        for t in enc.timesteps:
            x = enc.step(eps_model(x, t), t, x).prev_sample
        assert float((x - data).abs().max()) > 0.5  # a latent, not the data
        for t in dec.timesteps:
            x = dec.step(eps_model(x, t), t, x).prev_sample
        errs.append(float((x - data).abs().max()))
    assert errs[-1] < 0.01 and all(a >= 3 * b for a, b in zip(errs, errs[1:])), errs


# ---------------------------------------------------------------------------------------------- UniPC on ε̂
UNIPC_CONFIGS = {
    "bh2": {},
    "bh2-20": {"n": 20},
    "bh1": {"solver_type": "bh1"},
    "order1": {"solver_order": 1},
    "order3": {"solver_order": 3},
    "v": {"prediction_type": "v_prediction"},
    "x0": {"prediction_type": "sample"},
    "trailing": {"timestep_spacing": "trailing"},
    "no-lower-final": {"lower_order_final": False, "solver_order": 3},
    "corrector-off": {"disable_corrector": [1, 2]},
    "karras-to-zero": {"use_karras_sigmas": True, "final_sigmas_type": "zero"},
}


@pytest.mark.parametrize("config", UNIPC_CONFIGS.values(), ids=UNIPC_CONFIGS.keys())
def test_unipc_noise_prediction_parity(config):
    """UniPCMultistepScheduler(predict_x0=False), by default with final_sigmas_type='sigma_min': every step, float64.
    diffusers' σ's are float32 values (cast to float64 here), unisde's float64 ones of the same float32 ᾱ table: the
    noise form's x weight s_{k+1}/s_k (≈ 40 from index 999) turns that 6e-8 into ≤ 2e-7 of the scale. With
    final_sigmas_type='zero' diffusers' last step is NaN (σ (e^h − 1) = 0 · ∞); the twin takes its limit, which
    diffusers approaches with its last σ set to 1e-12. 8 steps; 20 for bh2."""
    config = {"final_sigmas_type": "sigma_min", **config}
    n = config.pop("n", 8)
    ref = diffusers.UniPCMultistepScheduler(predict_x0=False, **config)
    uni = convert(ref, "unipc")
    assert uni._sampler.opts["predict_x0"] is False
    last = 1e-12 if config["final_sigmas_type"] == "zero" else None
    ref_states = run_standard(ref, start(torch.float64), n, float64=True, last_sigma=last)
    uni_states = run_standard(uni, start(torch.float64), n, ref=False)
    assert torch.equal(ref.timesteps, uni.timesteps)
    errs = errors(ref_states, uni_states)
    assert max(errs) <= 2 * TOL64, [f"{e:.2g}" for e in errs]


def test_unipc_noise_prediction_float32_and_its_last_step_to_zero():
    """float32, ε-prediction, default final_sigmas_type='zero': every step but the last within 1e-5; diffusers'
    last step, into σ = 0, is NaN, the twin's finite. The noise form is another method than the data form: their
    samples differ by far more than the tolerance."""
    n = 8
    ref = diffusers.UniPCMultistepScheduler(predict_x0=False)
    uni = convert(ref, "unipc")
    ref_states = run_standard(ref, start(), n)
    uni_states = run_standard(uni, start(), n, ref=False)
    assert torch.isnan(ref_states[-1]).all() and torch.isfinite(uni_states[-1]).all()
    errs = errors(ref_states[:-1], uni_states[:-1])
    assert max(errs) <= TOL, [f"{e:.2g}" for e in errs]
    data_form = run_standard(convert(diffusers.UniPCMultistepScheduler(), "unipc"), start(), n, ref=False)
    assert max(errors(ref_states[:-1], data_form[:-1])) > 100 * TOL


def test_unipc_noise_prediction_refusals():
    """diffusers thresholds x̂0 only in the data-prediction form (and refuses flow prediction in the noise form)."""
    for flags, match in (
        ({"thresholding": True}, "predict_x0=False with thresholding=True"),
        ({"use_flow_sigmas": True, "prediction_type": "flow_prediction"}, "predict_x0=False with prediction_type"),
    ):
        source = diffusers.UniPCMultistepScheduler(predict_x0=False, **flags)
        with pytest.raises(ValueError, match=match):
            UnifiedScheduler.from_config(source)


# ---------------------------------------------------------------------------------------------- CogVideoX
COGVIDEOX_REAL = {  # CogVideoX-2b/5b's scheduler config (diffusers' docs)
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
}
COGVIDEOX_CONFIGS = {
    "default": ({}, 8),
    "trailing": ({"timestep_spacing": "trailing"}, 8),
    "offset": ({"steps_offset": 1}, 8),
    "linear": ({"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, 8),
    "cosine": ({"beta_schedule": "squaredcos_cap_v2"}, 8),
    "no-shift": ({"snr_shift_scale": 1.0}, 8),
    "x0": ({"prediction_type": "sample"}, 8),
    "cogvideox-50": (COGVIDEOX_REAL, 50),
}


def run_cogvideox_dpm(ref, x, n):
    """CogVideoXDPMScheduler's own step signature, as CogVideoX pipelines call it."""
    ref.set_timesteps(n)
    g, old, out = torch.Generator().manual_seed(3), None, []
    for i, t in enumerate(ref.timesteps):
        back = ref.timesteps[i - 1] if i > 0 else None
        x, old = ref.step(model(x, t), old, t, back, x, generator=g, return_dict=False)
        out.append(x)
    return out


@pytest.mark.parametrize("config, n", COGVIDEOX_CONFIGS.values(), ids=COGVIDEOX_CONFIGS.keys())
def test_cogvideox_ddim_and_dpm_parity(config, n):
    """Both classes on their SNR-shifted tables (ᾱ of the table = diffusers' alphas_cumprod): the same timesteps
    and samples within 1e-5 × scale; CogVideoX's real config (v, zero terminal SNR, trailing) at its 50 steps."""
    ddim = diffusers.CogVideoXDDIMScheduler(**config)
    uni = convert(ddim, "ddim")
    t = torch.arange(1, ddim.config.num_train_timesteps + 1, dtype=torch.float64) / ddim.config.num_train_timesteps
    torch.testing.assert_close(uni.noise_schedule.s(t) ** 2, ddim.alphas_cumprod.double(), rtol=1e-12, atol=1e-15)
    errs = errors(run_standard(ddim, start(), n), run_standard(uni, start(), n, ref=False))
    assert torch.equal(ddim.timesteps, uni.timesteps)
    assert max(errs) <= TOL, ("ddim", [f"{e:.2g}" for e in errs])
    dpm = diffusers.CogVideoXDPMScheduler(**config)
    uni = convert(dpm, "dpmsolver++")
    errs = errors(run_cogvideox_dpm(dpm, start(), n), run_standard(uni, start(), n, ref=False))
    assert torch.equal(dpm.timesteps, uni.timesteps)
    assert max(errs) <= TOL, ("dpm", [f"{e:.2g}" for e in errs])


def test_cogvideox_ddim_alpha_to_one_eta_and_clipping():
    """set_alpha_to_one=False ends at index 0; the class clips nothing (clip_sample=True is its default, and this
    model's x̂0 leaves [−1, 1]) and ignores a pipeline's eta, as the twin does (eta pinned to 0)."""
    ref = diffusers.CogVideoXDDIMScheduler(set_alpha_to_one=False)
    uni = convert(ref, "ddim")
    assert uni.config.clip_sample is False and uni.sampler_options == {"eta": 0.0, "diffusers_prev_timestep": True}
    ref.set_timesteps(8)
    x0 = ref.step(model(start(), ref.timesteps[0]), ref.timesteps[0], start()).pred_original_sample
    assert float(x0.abs().max()) > 1.5
    errs = errors(run_standard(ref, start(), 8, eta=0.7), run_standard(uni, start(), 8, ref=False, eta=0.7))
    assert max(errs) <= TOL, [f"{e:.2g}" for e in errs]


@pytest.mark.parametrize(
    "cls, flag, value",
    [
        ("CogVideoXDDIMScheduler", "timestep_spacing", "linspace"),
        ("CogVideoXDPMScheduler", "timestep_spacing", "linspace"),
        ("CogVideoXDPMScheduler", "set_alpha_to_one", False),
        ("CogVideoXDDIMScheduler", "beta_schedule", "sigmoid"),
    ],
)
def test_cogvideox_refuses_by_name(cls, flag, value):
    cfg = {**getattr(diffusers, cls)().config, flag: value, "_class_name": cls}
    with pytest.raises(ValueError, match=f"{cls} flag {flag}="):
        UnifiedScheduler.from_config(cfg)
    cfg = {**getattr(diffusers, cls)().config, "snr_shift_scale": 0.0, "_class_name": cls}
    with pytest.raises(ValueError, match="snr_shift_scale=0.0 must be a number > 0"):
        UnifiedScheduler.from_config(cfg)


def test_cogvideox_round_trip_config_and_recorded_keys():
    """The class's own keys survive the conversion (converting back is lossless) and are never read alone."""
    uni = UnifiedScheduler.from_config(diffusers.CogVideoXDDIMScheduler(snr_shift_scale=2.0))
    back = diffusers.CogVideoXDDIMScheduler.from_config(uni.config)
    assert back.config.snr_shift_scale == 2.0
    with pytest.raises(ValueError, match="snr_shift_scale"):
        UnifiedScheduler(snr_shift_scale=2.0)


# ---------------------------------------------------------------------------------------------- Würstchen
@pytest.mark.parametrize("config", [{}, {"scaler": 2.0}, {"scaler": 0.5}, {"s": 0.02}], ids=str)
@pytest.mark.parametrize("n", [8, 30])
def test_wuerstchen_parity(config, n):
    """DDPMWuerstchenScheduler's steps over linspace(1, 0, n + 1)[:-1] (what Stable Cascade's pipelines loop over),
    t fed as a batch, the same generator: every step within 1e-5, the last ending at ᾱ(0) = 1 − 10⁻⁴."""
    ref = diffusers.DDPMWuerstchenScheduler(**config)
    uni = convert(ref, "ddpm")
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    torch.testing.assert_close(uni.timesteps.double(), ref.timesteps[:-1].double(), rtol=0, atol=1e-7)
    x, y = start(), start()
    g_ref, g_uni = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ref_states, uni_states = [], []
    for t_ref, t_uni in zip(ref.timesteps[:-1], uni.timesteps):
        x = ref.step(model(x, t_ref), t_ref.expand(x.shape[0]), x, generator=g_ref).prev_sample
        y = uni.step(model(y, t_uni), t_uni, y, generator=g_uni).prev_sample
        ref_states.append(x)
        uni_states.append(y)
    errs = errors(ref_states, uni_states)
    assert max(errs) <= TOL, [f"{e:.2g}" for e in errs]


def test_wuerstchen_schedule_is_the_class_alpha_cumprod():
    """The ``wuerstchen-cosine`` schedule: s² = the class's _alpha_cumprod(t) (clamped ends included), σ² = 1 − s²,
    and g² = −σ² dλ/dt (seed 000 eq. 24) by central differences where ᾱ is not clamped, 0 where it is."""
    for scaler in (1.0, 2.0, 0.5):
        ref = diffusers.DDPMWuerstchenScheduler(scaler=scaler)
        sched = convert(ref, "ddpm").noise_schedule
        t = torch.tensor([0.0, 0.001, 0.05, 0.3, 0.5, 0.9, 0.995, 1.0], dtype=torch.float64)
        expected = ref._alpha_cumprod(t.float(), "cpu").double()
        torch.testing.assert_close(sched.s(t) ** 2, expected, rtol=3e-5, atol=1e-9)  # diffusers' float32 cos
        torch.testing.assert_close(sched.s(t) ** 2 + sched.sigma(t) ** 2, torch.ones_like(t), rtol=1e-12, atol=0)
        mid = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
        h = 1e-6
        dlam = (sched.log_snr(mid + h) - sched.log_snr(mid - h)) / (2 * h)
        torch.testing.assert_close(sched.g2(mid), -(sched.sigma(mid) ** 2) * dlam, rtol=1e-5, atol=0)
        flat = torch.tensor([0.0, 1.0], dtype=torch.float64)
        assert bool((sched.g2(flat) == 0).all())


# ---------------------------------------------------------------------------------------------- UnCLIP
def run_unclip(sched, x, n, out_fn=model, float64_tables=False):
    """The loop of UnCLIP's pipelines: prev_timestep = the next timestep, None at the last."""
    sched.set_timesteps(n)
    if float64_tables:  # diffusers' float32 tables in float64, so that it computes its coefficients in float64
        for name in ("betas", "alphas", "alphas_cumprod", "one"):
            setattr(sched, name, getattr(sched, name).to(torch.float64))
    g, out = torch.Generator().manual_seed(3), []
    for i, t in enumerate(sched.timesteps):
        prev = sched.timesteps[i + 1] if i + 1 < n else None
        x = sched.step(out_fn(x, t), t, x, prev_timestep=prev, generator=g).prev_sample
        out.append(x)
    return out


UNCLIP_CONFIGS = {
    "default": {},
    "noclip": {"clip_sample": False},
    "x0": {"prediction_type": "sample"},
    "range2": {"clip_sample_range": 2.0},
}


@pytest.mark.parametrize("config", UNCLIP_CONFIGS.values(), ids=UNCLIP_CONFIGS.keys())
@pytest.mark.parametrize("n", [8, 25])
def test_unclip_parity(config, n):
    """UnCLIPScheduler as its pipelines call it (prev_timestep = the next timestep, None at the last): its
    timesteps and every sample, the last included, in float64 with its float32 tables cast to float64, within 1e-7.
    Its last step weighs x̂0 by β_0/(1 − ᾱ_0) of its table (1 − 5.3e-4, not 1: the table stores ᾱ_0 = 1 − β_0 in
    float32), which the twin's ``diffusers_last_x0_weight`` reproduces (test_unclip_float32_slips)."""
    ref = diffusers.UnCLIPScheduler(**config)
    uni = convert(ref, "ddpm")
    ref_states = run_unclip(ref, start(torch.float64), n, float64_tables=True)
    uni_states = run_unclip(uni, start(torch.float64), n)
    assert torch.equal(ref.timesteps, uni.timesteps)
    errs = errors(ref_states, uni_states)
    assert max(errs) <= TOL64, [f"{e:.2g}" for e in errs]


def run_unclip_lockstep(ref, uni, x, n):
    """Both schedulers stepped from diffusers' state of the previous step (its pipeline loop, one generator each with
    the same seed): each step's own error, max |Δ| / max |x| of diffusers' states."""
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    gr, gu = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ref_states, uni_states = [], []
    for i, (tr, tu) in enumerate(zip(ref.timesteps, uni.timesteps)):
        prev = ref.timesteps[i + 1] if i + 1 < n else None
        out = model(x, tr)
        uni_states.append(uni.step(out, tu, x, prev_timestep=prev, generator=gu).prev_sample)
        x = ref.step(out, tr, x, prev_timestep=prev, generator=gr).prev_sample
        ref_states.append(x)
    return errors(ref_states, uni_states)


@pytest.mark.parametrize("config", UNCLIP_CONFIGS.values(), ids=UNCLIP_CONFIGS.keys())
@pytest.mark.parametrize("n", [8, 25])
def test_unclip_float32_slips(config, n):
    """In float32, the class as it runs. Its last step, index 0 → data, weighs x̂0 by β_0/(1 − ᾱ_0) of its float32
    table (1 − 5.3e-4): the converter sets the twin's ``diffusers_last_x0_weight`` to that float32 value, so the
    last sample is within 1e-5 with no factor applied here. The one slip not reproduced: diffusers forms the step's
    α as 1 − β in float32 (β = 1 − ᾱ_t/ᾱ_{t'}), which from ᾱ_999 ≈ 2.4e-9 rounds ᾱ_t/ᾱ_{t'} ≈ 5e-8 to a multiple
    of 6e-8 on the first step: √α, the sample's weight there, moves by 2e-5, which clipped x̂0 (|x̂0| ≤ 1 while x ~ 3)
    exposes as 1.7–1.9e-5 of the scale and the following steps carry, decaying. Without clipping every sample is
    within 1e-5; with it, each step taken from diffusers' own previous state is within 1e-5 except the first, whose
    error is that √α slip (its float32 weight against the float64 one, times max |x|), and the last sample of the
    whole loop is within 1e-5."""
    ref = diffusers.UnCLIPScheduler(**config)
    uni = convert(ref, "ddpm")
    weight = float(ref.one**0.5 * ref.betas[0] / (1 - ref.alphas_cumprod[0]))  # as its step computes it
    assert uni.sampler_options["diffusers_last_x0_weight"] == weight and abs(weight - 1) > 1e-4  # the slip is real
    ref_states, uni_states = run_unclip(ref, start(), n), run_unclip(uni, start(), n)
    errs = errors(ref_states, uni_states)
    assert errs[-1] <= TOL, [f"{e:.2g}" for e in errs]
    if not ref.config.clip_sample:
        assert max(errs) <= TOL, [f"{e:.2g}" for e in errs]
        return
    steps = run_unclip_lockstep(diffusers.UnCLIPScheduler(**config), uni, start(), n)
    assert max(steps[1:]) <= TOL, [f"{e:.2g}" for e in steps]
    t, t_next = int(ref.timesteps[0]), int(ref.timesteps[1])
    abar = ref.alphas_cumprod
    alpha32 = 1 - (1 - abar[t] / abar[t_next])  # float32, as its step
    abar64 = abar.double()
    slip = float(alpha32**0.5 - (abar64[t] / abar64[t_next]).sqrt()) * float((1 - abar64[t_next]) / (1 - abar64[t]))
    scale = max(float(x.abs().max()) for x in ref_states)
    predicted = abs(slip) * float(start().abs().max()) / scale
    assert predicted > TOL and abs(steps[0] - predicted) <= 0.05 * predicted, (steps[0], predicted)


def test_unclip_clean_ddpm_ends_on_x0():
    """The quirk stays with the twin: ``sampler="ddpm"`` with other options (another variance) has no
    ``diffusers_last_x0_weight``, another sampler never sees it, the twin's own options under ``sampler="ddpm"``
    keep it. In float64, ddpm without it (weight 1) ends on the exact posterior mean at σ' = 0, the (clipped) x̂0
    itself, and the twin's states are the same but the last, which is exactly that x̂0 times the weight."""
    ref = diffusers.UnCLIPScheduler()
    twin = convert(ref, "ddpm")
    other = UnifiedScheduler.from_config(ref.config, sampler="ddpm", sampler_options={"variance_type": "fixed_small"})
    assert other.config.sampler_options == {"variance_type": "fixed_small"}
    assert "diffusers_last_x0_weight" not in UnifiedScheduler.from_config(ref.config, sampler="ddim").sampler_options
    own = {"variance_type": "fixed_small_log"}
    assert UnifiedScheduler.from_config(ref.config, sampler="ddpm", sampler_options=own).sampler_options == (
        twin.sampler_options
    )
    clean = UnifiedScheduler.from_config(
        ref.config, sampler="ddpm", sampler_options={**own, "diffusers_last_x0_weight": 1.0}
    )
    n, x = 8, start(torch.float64)
    twin_states = run_unclip(twin, x, n)
    clean.set_timesteps(n)
    g, states = torch.Generator().manual_seed(3), []
    for t in clean.timesteps:
        out = clean.step(model(x, t), t, x, generator=g)
        x = out.prev_sample
        states.append(x)
    assert torch.equal(x, out.pred_original_sample)
    assert all(torch.equal(a, b) for a, b in zip(twin_states[:-1], states[:-1]))
    assert torch.equal(twin_states[-1], x * twin.sampler_options["diffusers_last_x0_weight"])


def test_ddpm_last_x0_weight_refuses_off_a_table():
    """The option names a step of a β table (index 0 → data): a continuous schedule refuses it at set_timesteps,
    before any step; a weight ≤ 0 is refused at construction."""
    with pytest.raises(ValueError, match="diffusers_last_x0_weight=0.0 is invalid"):
        UnifiedScheduler(sampler="ddpm", sampler_options={"diffusers_last_x0_weight": 0.0})
    sched = UnifiedScheduler(
        schedule={"name": "vp-linear"}, sampler="ddpm", sampler_options={"diffusers_last_x0_weight": 0.99}
    )
    with pytest.raises(ValueError, match="diffusers_last_x0_weight needs a β table"):
        sched.set_timesteps(5)


def test_unclip_learned_range():
    """variance_type='learned_range': the model's second half of channels interpolates log β̃ and log β."""
    ref = diffusers.UnCLIPScheduler(variance_type="learned_range", clip_sample=False)
    uni = convert(ref, "ddpm")
    assert uni.sampler_options["variance_type"] == "learned_range"
    n = 8

    def with_variance(x, t):
        return torch.cat([model(x, t), torch.tanh(x)], dim=1)

    ref_states = run_unclip(ref, start(torch.float64), n, with_variance, float64_tables=True)
    uni_states = run_unclip(uni, start(torch.float64), n, with_variance)
    errs = errors(ref_states, uni_states)
    assert max(errs) <= TOL64, [f"{e:.2g}" for e in errs]


def test_unclip_refuses_by_name():
    for flag, value in (("prediction_type", "v_prediction"), ("beta_schedule", "linear")):
        cfg = {**diffusers.UnCLIPScheduler().config, flag: value, "_class_name": "UnCLIPScheduler"}
        with pytest.raises(ValueError, match=f"UnCLIPScheduler flag {flag}="):
            UnifiedScheduler.from_config(cfg)


# ---------------------------------------------------------------------------------------------- score-SDE VP
def run_score_sde_vp(ref, x, n):
    """ScoreSdeVpScheduler's pipeline-less API: step_pred(score, x, t, generator) → (x, x_mean)."""
    g, out = torch.Generator().manual_seed(3), []
    for t in ref.timesteps:
        x, _ = ref.step_pred(model(x, t), x, t, generator=g)
        out.append(x)
    return out


@pytest.mark.parametrize("config", [{}, {"beta_min": 0.5, "beta_max": 10.0, "sampling_eps": 0.01}], ids=str)
@pytest.mark.parametrize("n", [8, 50])
def test_score_sde_vp_parity(config, n):
    """Euler–Maruyama on the VP-SDE with dt = −1/n at linspace(1, ε, n): float64 on both sides within 1e-7 (diffusers
    fed float64 times); float32 within 1e-5 where σ(ε) is not formed by cancellation (ε = 0.01: at ε = 1e-3 diffusers'
    float32 σ = √(1 − e^{−1e−4}) carries 1e-3 relative error, ~7e-5 of the scale after 8 steps)."""
    ref = diffusers.schedulers.ScoreSdeVpScheduler(**config)
    uni = convert(ref, "sde")
    assert uni.sampler_options == {"eta": 1.0, "method": "euler_maruyama", "fixed_dt": True}
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    torch.testing.assert_close(uni.timesteps.double(), ref.timesteps.double(), rtol=0, atol=1e-7)
    ref.timesteps = ref.timesteps.double()
    ref_states = run_score_sde_vp(ref, start(torch.float64), n)
    uni_states = run_standard(uni, start(torch.float64), n, ref=False)
    errs = errors(ref_states, uni_states)
    assert max(errs) <= TOL64, [f"{e:.2g}" for e in errs]
    if config:
        ref.set_timesteps(n)
        errs = errors(run_score_sde_vp(ref, start(), n), run_standard(uni, start(), n, ref=False))
        assert max(errs) <= TOL, [f"{e:.2g}" for e in errs]


def test_new_classes_convert_back_losslessly():
    for cls, kwargs in (
        (diffusers.DDPMWuerstchenScheduler, {"scaler": 2.0, "s": 0.01}),
        (diffusers.schedulers.ScoreSdeVpScheduler, {"beta_max": 12.0, "sampling_eps": 0.01}),
        (diffusers.UnCLIPScheduler, {"variance_type": "learned_range"}),
        (diffusers.DPMSolverMultistepInverseScheduler, {"solver_order": 3}),
    ):
        uni = UnifiedScheduler.from_config(cls(**kwargs).config)
        back = cls.from_config(uni.config)
        for key, value in kwargs.items():
            assert back.config[key] == value, (cls.__name__, key)


# ---------------------------------------------------------------------------------------------- respaced σ̃ timesteps
RESPACED_TABLES = {
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "linear": {"beta_schedule": "linear"},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}
RESPACED = [
    ("DPMSolverMultistepScheduler", "use_karras_sigmas"),
    ("DPMSolverMultistepScheduler", "use_exponential_sigmas"),
    ("DPMSolverMultistepScheduler", "use_beta_sigmas"),
    ("DPMSolverMultistepScheduler", "use_lu_lambdas"),
    ("UniPCMultistepScheduler", "use_karras_sigmas"),
    ("UniPCMultistepScheduler", "use_exponential_sigmas"),
    ("UniPCMultistepScheduler", "use_beta_sigmas"),
    ("DPMSolverSinglestepScheduler", "use_karras_sigmas"),
    ("DPMSolverSinglestepScheduler", "use_exponential_sigmas"),
]


@pytest.mark.parametrize("table", RESPACED_TABLES, ids=str)
@pytest.mark.parametrize("cls, flag", RESPACED, ids=[f"{c[:-9]}-{f[4:]}" for c, f in RESPACED])
def test_respaced_sigmas_feed_diffusers_timesteps_exactly(cls, flag, table):
    """diffusers rounds (Karras, λ-uniform) or int64-truncates (exponential, Beta; every flag of DPMSolverMultistep on
    the cosine table) the index its ``_sigma_to_t`` computes for each of its float64 σ̃ against its float32 log-σ̃
    table; SD's and the cosine table's σ̃_max land at 998.9999997 there (fed 998, the exact index 999). The twin's
    timesteps are diffusers' own, values and dtype, at 5, 10, 20, 25 and 50 steps, and every state of the plain
    ``step()`` loop on a model that reads its timestep agrees to 1e-5 of the scale (float32; measured ≤ 4.1e-6, where
    the exact index's 999 cost up to 2.2e-3). On the cosine table DPMSolverMultistep's truncated Karras/λ timesteps
    repeat 998 at the start, so diffusers' step counter would start at the second (and run past its σ's): both loops
    start at index 0 there, as img2img pipelines do with set_begin_index(0)."""
    for n in (5, 10, 20, 25, 50):
        ref = getattr(diffusers, cls)(**RESPACED_TABLES[table], **{flag: True})
        uni = UnifiedScheduler.from_config(ref.config)
        assert uni.config.timestep_rounding in ("diffusers_round", "diffusers_floor")
        states = []
        for sched in (ref, uni):
            sched.set_timesteps(n)
            if int(sched.timesteps[0]) == int(sched.timesteps[1]):
                sched.set_begin_index(0)
            x, out = start(), []
            for t in sched.timesteps:
                x = sched.step(model(x, t), t, x).prev_sample
                out.append(x)
            states.append(out)
        assert ref.timesteps.dtype == uni.timesteps.dtype == torch.int64
        assert torch.equal(ref.timesteps, uni.timesteps), (n, ref.timesteps, uni.timesteps)
        # the σ̃ the sampler steps with are unisde's own float64 levels, which agree with diffusers' float32 ones
        torch.testing.assert_close(uni.sigmas.double(), ref.sigmas.double(), rtol=1e-6, atol=0)
        errs = errors(*states)
        assert max(errs) <= TOL, (n, [f"{e:.2g}" for e in errs])


def test_diffusers_index_rounding_needs_its_flag_and_its_grid():
    """``timestep_rounding="diffusers_floor"`` feeds the indices of the σ̃ of one respacing flag: without one it is
    refused at construction, and on a grid with other levels at ``set_timesteps``, before any step."""
    common = {"sampler": "dpmsolver++", "timestep_rounding": "diffusers_floor"}
    with pytest.raises(ValueError, match="exactly one of use_karras_sigmas"):
        UnifiedScheduler(time_grid="uniform_lambda", **common)
    uni = UnifiedScheduler(time_grid="karras", use_exponential_sigmas=True, **common)
    with pytest.raises(ValueError, match="time grid 'karras' has other levels"):
        uni.set_timesteps(10)
    ok = UnifiedScheduler(time_grid="uniform_lambda", use_exponential_sigmas=True, **common)
    ok.set_timesteps(10)
    ref = diffusers.DPMSolverMultistepScheduler(use_exponential_sigmas=True)  # its default table: linear
    ref.set_timesteps(10)
    assert torch.equal(ok.timesteps, ref.timesteps)
    ok.set_timesteps(timesteps=[900, 500, 100])  # given timesteps: fed as given (floored)
    assert ok.timesteps.tolist() == [900, 500, 100]
