"""One schedule resolver (unisde.core.schedule.resolve_schedule) behind every entry point: names, inline JSON,
to_config() dicts, diffusers configs; files only through explicit reads; validation of tables and closed forms;
float32 ᾱ ties; precision of tables far from ᾱ ~ 1."""

from __future__ import annotations

import builtins
import io
import json
import math
import os
import re

import pytest
import torch
from conftest import SCHEDULES

from unisde import NoiseSchedule
from unisde.core.schedule import (
    MAX_SCHEDULE_FILE_BYTES,
    TabulatedSchedule,
    load_schedule_file,
    read_schedule_config,
    resolve_schedule,
)

F64 = torch.float64
VE_CONFIG = {"name": "ve", "sigma_min": 0.01, "sigma_max": 50.0}


def _same_schedule(a: NoiseSchedule, b: NoiseSchedule, rtol: float = 1e-12) -> None:
    t = torch.linspace(0.0, 1.0, 257, dtype=F64)
    for method in ("s", "sigma", "f", "g2", "log_snr"):
        x, y = getattr(a, method)(t), getattr(b, method)(t)
        assert torch.allclose(x, y, rtol=rtol, atol=1e-300), method
    assert a.timestep_convention == b.timestep_convention


@pytest.fixture
def no_file_access(monkeypatch):
    """Fail the test if anything opens a file (the resolver must not, for strings)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a file was opened: {args[:1]}")

    for module, name in ((os, "open"), (builtins, "open"), (io, "open")):
        monkeypatch.setattr(module, name, refuse)


# ---------------------------------------------------------------------------------------------- the one resolver
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_to_config_round_trips_through_json(name):
    """Every kind of schedule: resolve_schedule(JSON of to_config()) is the same schedule (tables included)."""
    sched = SCHEDULES[name]()
    back = resolve_schedule(json.loads(json.dumps(sched.to_config())))
    _same_schedule(back, sched)
    assert NoiseSchedule.from_config(json.dumps(sched.to_config())).to_config() == back.to_config()


def test_from_sde_table_round_trips_its_knots():
    """A from_sde table's to_config keeps its graded knots and σ(0), so the round trip is exact."""
    sched = NoiseSchedule.from_sde(NoiseSchedule.ve().f, NoiseSchedule.ve().g2, sigma0=0.01, num_panels=64)
    back = resolve_schedule(json.loads(json.dumps(sched.to_config())))
    _same_schedule(back, sched)
    assert back.timestep_convention == "t"


@pytest.mark.parametrize("spec", ["ve", " ve ", "VE", '{"name": "ve", "sigma_min": 0.01, "sigma_max": 50}', VE_CONFIG])
def test_names_inline_json_and_dicts_give_the_same_schedule(spec):
    _same_schedule(resolve_schedule(spec), NoiseSchedule.ve(0.01, 50.0))


def test_diffusers_configs_dicts_and_objects():
    from diffusers import DDPMScheduler, EDMEulerScheduler

    ddpm = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    expected = NoiseSchedule.from_diffusers_config(ddpm.config)
    for spec in (ddpm, ddpm.config, dict(ddpm.config), json.dumps(dict(ddpm.config))):
        _same_schedule(resolve_schedule(spec), expected)
    edm = resolve_schedule(EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0).config)
    assert edm.name == "edm" and edm.timestep_convention == "edm"
    # The diffusers-shaped spec of a table (name "diffusers") is a diffusers config too.
    _same_schedule(resolve_schedule(expected.to_config()), expected)


@pytest.mark.parametrize(
    "spec, pattern",
    [
        (
            {"sigma_mn": 0.01, "foo": 1},
            r"schedule config with keys \['foo', 'sigma_mn'\] is neither a unisde schedule "
            r"config .* nor a diffusers scheduler config",
        ),
        ({}, r"schedule config is empty"),
        (
            {"name": "ve", "sigma_mx": 3.0},
            r"schedule 've' has no parameter\(s\) \['sigma_mx'\]; its parameters: sigma_min, "
            r"sigma_max",
        ),
        ({"name": "diffusers", "beta_shedule": "linear"}, r"'diffusers': unknown keys \['beta_shedule'\]"),
        ({"name": "no-such"}, r"unknown schedule 'no-such'; valid choices: .*vp-linear"),
        ({"name": 3}, r"'name' must be a string, got 3"),
        ("vp-linaer", r"unknown schedule 'vp-linaer'; valid choices: .* Did you mean 'vp-linear'"),
        ("{not json", r"looks like inline JSON but does not parse"),
        ("[1, 2]", r"unknown schedule '\[1, 2\]'"),
        ('{"name": "ve", "sigma_max": Infinity}', r"ve: sigma_max must be finite, got sigma_max=inf"),
        (3.5, r"a schedule is a NoiseSchedule, a name .* got float 3\.5"),
    ],
)
def test_bad_specs_name_the_problem(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_schedule(spec)


# ---------------------------------------------------------------------------------------------- issue 13 item 1: files
def test_to_config_file_is_the_ve_schedule_everywhere(tmp_path, capsys):
    """A JSON file with NoiseSchedule.to_config() used to be read as a diffusers config (the default DDPM table)."""
    from unisde.cli import main
    from unisde.training.config import resolve_schedule as training_resolve

    path = tmp_path / "ve.json"
    path.write_text(json.dumps(VE_CONFIG))
    ve = NoiseSchedule.ve(0.01, 50.0)
    for sched in (
        NoiseSchedule.from_config(path),
        resolve_schedule(path),
        load_schedule_file(path),
        load_schedule_file(str(path)),
        NoiseSchedule.from_diffusers_config(str(path)),
        training_resolve(str(path)),
    ):
        assert sched.name == "ve"
        _same_schedule(sched, ve)
    assert main(["schedule", str(path), "--points", "3"]) == 0
    assert "VESchedule(sigma_min=0.01, sigma_max=50.0" in capsys.readouterr().out


def test_file_errors_name_the_path(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "table", "rho": [0.5, 0.2]}))
    named = re.escape(repr(str(bad))) + r" is not a valid scheduler config: .*rho\[1\] = 0\.2"
    with pytest.raises(ValueError, match=named):
        load_schedule_file(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json' is not a valid scheduler config: expected a JSON object"):
        load_schedule_file(listed)
    with pytest.raises(ValueError, match=r"no such file '.*missing\.json'"):
        load_schedule_file(tmp_path / "missing.json")


def test_only_regular_files_are_read(tmp_path):
    """/dev/zero, a FIFO (no writer: a blocking open would hang), a folder and an oversized file are refused
    before a byte is read."""
    if os.path.exists("/dev/zero"):
        with pytest.raises(ValueError, match=r"schedule file '/dev/zero' is a character device"):
            read_schedule_config("/dev/zero")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.json"
        os.mkfifo(fifo)
        with pytest.raises(ValueError, match=r"fifo\.json' is a FIFO"):
            load_schedule_file(fifo)
    with pytest.raises(ValueError, match=r"has neither scheduler_config\.json nor scheduler/scheduler_config\.json"):
        read_schedule_config(tmp_path)
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(MAX_SCHEDULE_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ValueError, match=rf"big\.json' has {MAX_SCHEDULE_FILE_BYTES + 1} bytes"):
        read_schedule_config(big)


# ------------------------------------------------------------------------------ item 10: strings never open files
@pytest.fixture
def crafted(tmp_path) -> str:
    """A file that *would* resolve to a valid schedule if it were read."""
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps(VE_CONFIG))
    return str(path)


@pytest.mark.parametrize("text", ["/dev/zero", "/etc/passwd", "crafted"])
def test_a_string_naming_a_path_is_never_opened(text, crafted, no_file_access):
    """A config value such as schedule="/dev/zero" is an unknown name, decided without opening anything."""
    text = crafted if text == "crafted" else text
    for build in (
        lambda: resolve_schedule(text),
        lambda: NoiseSchedule.from_config(text),
        lambda: NoiseSchedule.from_diffusers_config({"schedule": text}),
        lambda: resolve_schedule({"schedule": text}),
    ):
        with pytest.raises(ValueError, match=r"unknown schedule '.*'; valid choices: .*never opened as a file"):
            build()


def test_scheduler_config_string_is_never_opened(no_file_access):
    from unisde.diffusers.scheduler import UnifiedScheduler

    with pytest.raises(ValueError, match=r"unknown schedule '/dev/zero'"):
        UnifiedScheduler(schedule="/dev/zero")
    assert UnifiedScheduler(schedule='{"name": "ve", "sigma_max": 80}').noise_schedule.sigma_max == 80.0


def test_a_hostile_pipeline_folder_opens_nothing_it_names(tmp_path, crafted, monkeypatch, capsys):
    """A pipeline folder whose scheduler config names a path (a file that would parse as a valid schedule), and one
    whose scheduler_config.json is a link to /dev/zero: every front door refuses in one line; the named file is
    never opened and /dev/zero never read."""
    from unisde.cli import main
    from unisde.diffusers.scheduler import UnifiedScheduler

    named, zero = tmp_path / "named" / "scheduler", tmp_path / "zero" / "scheduler"
    named.mkdir(parents=True)
    zero.mkdir(parents=True)
    (named / "scheduler_config.json").write_text(json.dumps({"_class_name": "UnifiedScheduler", "schedule": crafted}))
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    os.symlink("/dev/zero", zero / "scheduler_config.json")
    opened = []  # every path opened by anything (diffusers reads the config file itself)

    def spy(real):
        def open_and_record(f, *args, **kwargs):
            opened.append(f if isinstance(f, int) else os.fspath(f))
            return real(f, *args, **kwargs)

        return open_and_record

    for module, name in ((os, "open"), (builtins, "open"), (io, "open")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    with pytest.raises(ValueError, match=r"unknown schedule '.*crafted\.json'.*never opened as a file"):
        UnifiedScheduler.from_pretrained(str(named.parent), subfolder="scheduler")
    with pytest.raises(ValueError, match=r"unknown schedule '.*crafted\.json'"):
        load_schedule_file(named.parent)
    assert main(["schedule", str(named.parent)]) == 2
    with pytest.raises((ValueError, OSError)):  # diffusers: "no file named scheduler_config.json" (not a file)
        UnifiedScheduler.from_pretrained(str(zero.parent), subfolder="scheduler")
    assert main(["schedule", str(zero.parent)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "scheduler_config.json' is a character device" in err, err
    paths = [os.path.realpath(f) for f in opened if not isinstance(f, int)]
    assert os.path.realpath(named / "scheduler_config.json") in paths  # the spy sees what is opened
    assert os.path.realpath(crafted) not in paths and "/dev/zero" not in paths, opened


# ---------------------------------------------------------------------------------------------- item 2: table configs
@pytest.mark.parametrize(
    "rho, pattern",
    [
        ([0.1, 0.05, 0.5], r"rho must be non-decreasing .*rho\[1\] = 0\.05 < rho\[0\] = 0\.1"),
        ([0.1, 1.5], r"rho\[1\] = 1\.5 is outside \(0, 1\)"),
        ([-0.1, 0.5], r"rho\[0\] = -0\.1 is outside \(0, 1\)"),
        ([0.2, 1.0, 1.0], r"rho\[1\] = 1\.0 is outside \(0, 1\)"),
        ([0.1, float("nan")], r"rho must be a list of finite numbers.*nan"),
        ([], r"rho must be a non-empty 1-D table"),
        ("0.1, 0.2", r"rho must be a list of numbers, got str"),
    ],
)
def test_table_config_entries_are_validated(rho, pattern):
    with pytest.raises(ValueError, match=r"schedule config 'table': " + pattern):
        resolve_schedule({"name": "table", "rho": rho})


@pytest.mark.parametrize(
    "extra, pattern",
    [
        ({"scales": [1.0, -2.0]}, r"scales\[1\] = -2\.0 must be > 0"),
        ({"scales": [1.0]}, r"scales has 1 entries, expected 2"),
        ({"rho_complement": [0.9, 0.1]}, r"rho_complement\[1\] = 0\.1 is not 1 − rho\[1\]"),
        ({"t_knots": [0.0, 0.7, 0.5]}, r"t_knots must increase strictly from 0 to 1"),
        ({"rho0": 0.3}, r"rho\[0\] = 0\.1 < rho0 = 0\.3"),
        ({"sigma": [1]}, r"unknown keys \['sigma'\]; valid keys: rho, rho_complement"),
    ],
)
def test_table_config_other_keys_are_validated(extra, pattern):
    with pytest.raises(ValueError, match=pattern):
        resolve_schedule({"name": "table", "rho": [0.1, 0.6], **extra})


def test_table_with_scales_cannot_end_at_rho_one():
    with pytest.raises(ValueError, match=r"rho\[1\] = 1\.0 is outside"):
        resolve_schedule({"name": "table", "rho": [0.1, 1.0], "scales": [1.0, 1.0]})
    assert resolve_schedule({"name": "table", "rho": [0.1, 1.0]}).t_end < 1.0  # VP: zero terminal SNR


# ------------------------------------------------------------------------------ item 6: finite parameters
@pytest.mark.parametrize(
    "build, pattern",
    [
        (lambda: NoiseSchedule.vp_linear(0.1, math.inf), r"vp-linear: beta_max must be finite, got beta_max=inf"),
        (lambda: NoiseSchedule.vp_linear(math.nan, 20.0), r"vp-linear: beta_min must be finite, got beta_min=nan"),
        (lambda: NoiseSchedule.vp_linear(0.0, 20.0), r"vp-linear: beta_min must be > 0, got beta_min=0\.0"),
        (lambda: NoiseSchedule.vp_linear(5.0, 1.0), r"need 0 < beta_min <= beta_max, got beta_min=5\.0, beta_max=1\.0"),
        (
            lambda: NoiseSchedule.vp_linear(0.1, 3000.0),
            r"VPLinearSchedule\(beta_min=0\.1, beta_max=3000\.0\): .* not a finite",
        ),
        (lambda: NoiseSchedule.sub_vp(0.1, math.inf), r"sub-vp: beta_max must be finite"),
        (lambda: NoiseSchedule.ve(0.01, math.inf), r"ve: sigma_max must be finite, got sigma_max=inf"),
        (lambda: NoiseSchedule.ve(0.01, 1e200), r"ve: sigma_max=1e\+200 is too large: σ² overflows float64"),
        (lambda: NoiseSchedule.ve(-1.0, 5.0), r"ve: sigma_min must be > 0, got sigma_min=-1\.0"),
        (lambda: NoiseSchedule.ve(5.0, 1.0), r"need 0 < sigma_min < sigma_max, got sigma_min=5\.0, sigma_max=1\.0"),
        (lambda: NoiseSchedule.edm(0.002, 80.0, math.inf), r"edm: rho must be finite, got rho=inf"),
        (lambda: NoiseSchedule.edm(0.002, 1e160), r"edm: sigma_max=1e\+160 is too large"),
        (lambda: NoiseSchedule.vp_cosine(math.inf), r"vp-cosine: s \(cosine offset\) must be finite"),
        (lambda: NoiseSchedule.vp_cosine(-0.1), r"vp-cosine: s \(cosine offset\) must be > 0"),
        (lambda: NoiseSchedule.ve(0.01, "50"), r"ve: sigma_max must be a real number, got '50'"),
        (lambda: NoiseSchedule.ve(timestep_scale=math.inf), r"timestep_scale must be finite"),
        (lambda: NoiseSchedule.from_sigmas([0.1, 1e200]), r"sigmas\[1\] = 1e\+200 is too large: σ² overflows float64"),
        (
            lambda: NoiseSchedule.from_sigmas([0.1, 1.0], scales=[1.0, 1e-160]),
            r"sigmas\[1\] / scales\[1\] = 1e\+160 is too large",
        ),
        (
            lambda: NoiseSchedule.from_diffusers_config({"_class_name": "EDMEulerScheduler", "sigma_max": math.inf}),
            r"diffusers config of EDMEulerScheduler: sigma_max must be finite",
        ),
        (
            lambda: NoiseSchedule.from_diffusers_config({"num_train_timesteps": 10**9}),
            r"num_train_timesteps must lie in",
        ),
        (
            lambda: NoiseSchedule.from_diffusers_config({"num_train_timesteps": 2.5}),
            r"num_train_timesteps must be a positive",
        ),
        (
            lambda: NoiseSchedule.from_diffusers_config({"beta_end": 7.0}),
            r"beta_end must lie in \[0, 1\], got beta_end=7\.0",
        ),
        (
            lambda: NoiseSchedule.from_diffusers_config(
                {"beta_start": 0.5, "beta_end": 0.9, "num_train_timesteps": 200}
            ),
            r"diffusers config \(num_train_timesteps=200, beta_start=0\.5, beta_end=0\.9\) gives an invalid table: "
            r"alphas_cumprod must lie in \(0, 1\)",
        ),
        (
            lambda: NoiseSchedule.from_sde(lambda t: -0.5, lambda t: torch.ones_like(t)),
            r"from_sde: f\(t\) must return one value per time, a tensor of shape \(16384,\).*got shape \(\)",
        ),
        (
            lambda: NoiseSchedule.from_sde(lambda t: torch.zeros_like(t), lambda t: torch.ones(3)),
            r"from_sde: g2\(t\) must return one value per time.*got shape \(3,\)",
        ),
        (
            lambda: NoiseSchedule.from_sde(
                lambda t: torch.zeros_like(t), lambda t: torch.where(t > 0.5, math.inf, 1.0)
            ),
            r"from_sde: g2\(t\) is not finite at t = 0\.50\d*: inf",
        ),
        (
            lambda: NoiseSchedule.from_sde(lambda t: torch.zeros_like(t), lambda t: t - 0.5),
            r"from_sde: g2\(t\) must be >= 0 on \[0, 1\]; g2\([\d.e+-]+\) = -0\.\d+",
        ),
        (
            lambda: NoiseSchedule.from_sde(lambda t: -1e4 * torch.ones_like(t), lambda t: torch.ones_like(t)),
            r"from_sde: s\(t\) = exp ∫f = .* at t = .* leave the float64 range",
        ),
        (
            lambda: NoiseSchedule.from_sde(
                lambda t: torch.zeros_like(t), lambda t: torch.ones_like(t), sigma0=math.inf
            ),
            r"from_sde: sigma0 must be finite",
        ),
    ],
)
def test_closed_forms_and_tables_need_finite_representable_parameters(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build()


def test_from_sde_zero_slope_sample_point_is_fine():
    """Control for the from_sde errors above: a valid broadcast f and g² build a schedule."""
    sched = NoiseSchedule.from_sde(lambda t: torch.zeros_like(t), lambda t: torch.full_like(t, 2.0), num_panels=32)
    assert float(sched.sigma(1.0)) == pytest.approx(math.sqrt(2.0), rel=1e-9)


# ---------------------------------------------------------------------------------------------- float32 ᾱ ties
def test_million_step_cosine_table_as_diffusers_builds_it():
    """diffusers builds ᾱ in float32, where a 10⁶-step squaredcos_cap_v2 table repeats entries (the first at index
    4095); such a table is accepted, agrees with DDPMScheduler.add_noise (ties included), and stays monotone."""
    from diffusers import DDPMScheduler

    config = {"num_train_timesteps": 1_000_000, "beta_schedule": "squaredcos_cap_v2"}
    ddpm = DDPMScheduler(**config)
    abar32 = ddpm.alphas_cumprod
    ties = ((abar32[1:] == abar32[:-1]).nonzero().flatten() + 1).tolist()
    assert ties, "the float32 table is expected to repeat entries"
    sched = NoiseSchedule.from_diffusers_config(config)
    idx = torch.tensor([0, 1, ties[0] - 1, ties[0], 500_000, 999_998, 999_999])
    gen = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(len(idx), 4, generator=gen), torch.randn(len(idx), 4, generator=gen)
    t = sched.t_from_index(idx)
    assert float((sched.add_noise(x0, noise, t) - ddpm.add_noise(x0, noise, idx)).abs().max()) < 1e-6
    assert torch.equal(sched.timestep(t), idx.to(F64))
    # Monotone extension: g² ≥ 0 (exactly 0 across a repeated entry) and λ non-increasing, on and between knots.
    n = 1_000_000
    u = torch.cat([torch.linspace(0, 1, 20001, dtype=F64), (ties[0] + torch.linspace(0, 1, 11, dtype=F64)) / n])
    raw_g2 = sched._g2(sched._capped(u))
    assert float(raw_g2.min()) >= 0.0
    assert float(sched.g2((ties[0] + 0.5) / n)) == 0.0
    lam = sched.log_snr(u.sort().values)
    assert bool((lam[1:] <= lam[:-1]).all())


def test_set_timesteps_on_a_million_step_table_is_proportional_to_the_steps():
    """set_timesteps on a 10⁶-step table took 29 s and 1.5 GB; it now allocates nothing table-sized (one float64
    copy of the table is 8 MB): its largest allocation is per grid point (10 kB measured, with the blocked bisection of
    :meth:`NoiseSchedule._t_from_log_snr`), as on a 1000-step table."""
    from torch.profiler import ProfilerActivity, profile

    from unisde.diffusers.scheduler import UnifiedScheduler

    sched = UnifiedScheduler(num_train_timesteps=1_000_000, beta_schedule="squaredcos_cap_v2", sampler="euler")
    calls = [
        (dict(num_inference_steps=10), 10),
        (dict(timesteps=[999_999.0, 900_000.5, 10.25]), 3),
        (dict(sigmas=[100.0, 3.0, 0.5, 0.0]), 3),
    ]
    for call, steps in calls:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            sched.set_timesteps(**call)
        # no single allocation of a table's size (8 MB in float64, 4 MB in float32): the scratch of the
        # inversions is per grid point, whatever the table's length
        largest = max(max(e.cpu_memory_usage, 0) for e in prof.events())
        assert largest < 1e6, (call, largest)
        assert len(sched.timesteps) == steps


def test_alphas_cumprod_ties_within_float32_rounding_only():
    abar = torch.tensor([0.9, 0.8, 0.8, 0.5], dtype=F64)
    sched = NoiseSchedule.from_alphas_cumprod(abar)
    assert torch.allclose(sched.s(sched.t_from_index(torch.arange(4))) ** 2, abar, rtol=1e-15, atol=0)
    assert float(sched.g2(0.625)) == 0.0  # no noise is added across the repeated entry
    bump = 0.8 * (1 + 2.0**-25)  # an increase within float32 rounding: repaired to a tie
    repaired = NoiseSchedule.from_alphas_cumprod([0.9, 0.8, bump, 0.5])
    assert float(repaired.s(0.75)) == float(repaired.s(0.5)) == pytest.approx(math.sqrt(0.8), rel=1e-15)
    with pytest.raises(ValueError, match=r"alphas_cumprod\[1\] = 0\.8 and alphas_cumprod\[2\] = 0\.8001"):
        NoiseSchedule.from_alphas_cumprod([0.9, 0.8, 0.8001, 0.5])


# ---------------------------------------------------------------------------------------------- precision of tables
def test_tables_keep_relative_precision_far_from_one():
    """s of a VP table at ᾱ = 1e-30 and σ of a σ table at σ = 1e12 are exact to float64 rounding (they used to be
    formed as √(1 − ρ) with ρ ≈ 1, which kept only an absolute 1e-16 of ᾱ)."""
    abar = torch.logspace(-1, -30, 40, dtype=F64)
    vp = NoiseSchedule.from_alphas_cumprod(abar)
    t = vp.t_from_index(torch.arange(40))
    assert float(((vp.s(t) - abar.sqrt()) / abar.sqrt()).abs().max()) < 1e-14
    assert float(((vp.log_snr(t) - (abar / (1 - abar)).log()) / (abar / (1 - abar)).log()).abs().max()) < 1e-14
    sigmas = torch.logspace(-3, 12, 40, dtype=F64)
    ve = NoiseSchedule.from_sigmas(sigmas)
    assert float(((ve.sigma(t) - sigmas) / sigmas).abs().max()) < 1e-14
    between = (t[:-1] + t[1:]) / 2
    assert bool(torch.isfinite(vp.f(between)).all() and (vp.s(between) > 0).all())


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_schedule_accepts_inline_json(capsys):
    from unisde.cli import main

    assert main(["schedule", '{"name": "ve", "sigma_max": 80}', "--points", "3"]) == 0
    out = capsys.readouterr().out
    assert "VESchedule(sigma_min=0.01, sigma_max=80.0" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["schedule", "ve", "--plot", "/nonexistent/dir/x.png"],
            r"--plot '/nonexistent/dir/x\.png': folder "
            r"'/nonexistent/dir' does not exist",
        ),
        (["schedule", "/dev/zero"], r"schedule file '/dev/zero' is a character device"),
        (["schedule", '{"name": "table", "rho": [0.5, 0.2]}'], r"rho\[1\] = 0\.2 < rho\[0\] = 0\.5"),
        (["schedule", "nowhere/ve"], r"no such file 'nowhere/ve'"),
        (["trajectories", "--plot", "/nonexistent/dir/x.png"], r"--plot '/nonexistent/dir/x\.png': folder"),
        (
            ["train", "--dataset_name", "/nonexistent/ds", "--output_dir", "/nonexistent/out"],
            r"--dataset_name '/nonexistent/ds': no such dataset .*--train_data_dir",
        ),
    ],
)
def test_cli_errors_are_one_line(args, message, capsys):
    from unisde.cli import main

    if args[1] == "/dev/zero" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(f"unisde {args[0]}: error: .*" + message, err), err


def test_training_schedule_argument(tmp_path):
    from unisde.training.config import resolve_schedule as training_resolve

    assert training_resolve("ddpm-linear").is_discrete
    assert training_resolve('{"name": "edm", "sigma_max": 40}').sigma_max == 40.0
    assert training_resolve({"name": "vp-linear", "beta_max": 10.0}).beta_max == 10.0
    with pytest.raises(ValueError, match=r"unknown schedule 'edn'.*Did you mean 'edm'"):
        training_resolve("edn")
    with pytest.raises(ValueError, match=r"schedule file '/dev/zero' is a character device"):
        training_resolve("/dev/zero")  # an explicit command-line path: checked, never read


def test_tabulated_repr_is_short():
    sched = NoiseSchedule.from_sigmas(torch.logspace(-2, 2, 1000, dtype=F64))
    assert isinstance(sched, TabulatedSchedule) and len(repr(sched)) < 120
