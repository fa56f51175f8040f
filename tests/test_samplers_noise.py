"""A sampler's scaled noise draw (Sampler.scaled_noise_like, Sampler.noised): bitwise diffusers' randn_tensor · std
from the same generator stream, drawn pre-scaled only where that is exact on the installed torch."""

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from unisde import UnifiedScheduler
from unisde.core.schedule import NoiseSchedule
from unisde.plugins import get_sampler
from unisde.samplers.base import prescaled_draw_is_exact

SHAPES = [(1,), (15,), (16,), (17,), (3, 5, 7), (2, 4, 8, 8), (1, 300, 64)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
STDS = [0.0, 1e-3, 0.3, 1.0, 14.6]


def _sampler(name="ddim"):
    return get_sampler(name)(NoiseSchedule.from_diffusers_config({}))


def test_prescaled_draw_is_bitwise_randn_times_std_where_claimed():
    """Where prescaled_draw_is_exact says so, normal_(0, std) is randn · std bitwise, generator state after
    included: a torch upgrade that changes its CPU normal fill fails here, not as a silent ulp in every twin."""
    claimed = 0
    for shape in SHAPES:
        for dtype in DTYPES:
            if not prescaled_draw_is_exact(torch.zeros(shape, dtype=dtype), None):
                continue  # half, or float32 below 16 elements: drawn unscaled, then multiplied
            claimed += 1
            for std in STDS:
                g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
                want = torch.randn(shape, generator=g1, dtype=dtype).mul_(std)
                got = torch.empty(shape, dtype=dtype).normal_(0.0, std, generator=g2)
                assert torch.equal(got, want), (shape, dtype, std)
                assert torch.equal(g1.get_state(), g2.get_state())
    assert claimed == 2 * len(SHAPES) - 2  # float64 at every size, float32 from 16 elements


def test_prescaled_draw_is_claimed_for_cpu_float_draws_from_one_cpu_stream_only():
    x32, x64 = torch.zeros(2, 4, 8, 8), torch.zeros(3, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    assert prescaled_draw_is_exact(x32, None) and prescaled_draw_is_exact(x32, g) and prescaled_draw_is_exact(x64, g)
    assert not prescaled_draw_is_exact(torch.zeros(15), g)  # float32 below 16 elements: drawn in float64
    assert not prescaled_draw_is_exact(x32.half(), g)
    assert not prescaled_draw_is_exact(x32, [g, torch.Generator().manual_seed(1)])  # per-sample streams
    assert not prescaled_draw_is_exact(x32.to("meta"), None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("generator", ["one", "none", "list"])
def test_scaled_noise_like_is_randn_tensor_times_std(shape, dtype, generator):
    """Every path (pre-scaled or not) gives diffusers' draw times std bitwise and leaves the streams where
    diffusers leaves them."""
    sampler = _sampler()
    like = torch.zeros(shape, dtype=dtype)

    def streams():
        if generator == "one":
            return torch.Generator().manual_seed(7)
        if generator == "list":
            return [torch.Generator().manual_seed(7 + i) for i in range(shape[0])]
        torch.manual_seed(7)
        return None

    for std in STDS:
        ref_gen = streams()
        want = randn_tensor(shape, generator=ref_gen, device=like.device, dtype=dtype) * std
        ref_state = torch.get_rng_state() if ref_gen is None else None
        sampler.generator = streams()
        got = sampler.scaled_noise_like(like, std)
        assert got.dtype == dtype and got.shape == like.shape
        assert torch.equal(got, want), (std, dtype, shape)
        if generator == "one":
            assert torch.equal(sampler.generator.get_state(), ref_gen.get_state())
        elif generator == "none":
            assert torch.equal(torch.get_rng_state(), ref_state)


def test_noised_never_writes_a_callers_noise_and_forms_the_combination():
    sampler = _sampler()
    x, y = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    given = torch.randn(2, 4, 8, 8)
    kept = given.clone()
    sampler.noise_sampler = lambda like: given
    out = sampler.noised(x, 0.5, (x, 2.0), (y, -1.0))
    assert torch.equal(given, kept)
    torch.testing.assert_close(out, 0.5 * kept + 2.0 * x - y, rtol=1e-6, atol=1e-6)
    sampler.noise_sampler = None
    sampler.generator = torch.Generator().manual_seed(1)
    out = sampler.noised(x, 0.5, (x, 2.0))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, (z * 0.5).add_(x, alpha=2.0))


@pytest.mark.parametrize(
    "cls", ["EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LCMScheduler", "TCDScheduler"]
)
def test_ancestral_twins_draw_the_same_numbers_as_their_source(cls):
    """A twin's step with the pre-scaled draw, live against its diffusers class from one seed, on SD-latent-like
    float32 samples (the pre-scaled path) and on a 2×1×2×2 one (drawn, then scaled): equal to float rounding, so
    the noise is the same numbers."""
    import diffusers

    for shape in [(2, 4, 16, 16), (2, 1, 2, 2)]:
        peer = getattr(diffusers, cls)()
        twin = UnifiedScheduler.from_config(peer.config)
        outs = []
        for s in (peer, twin):
            s.set_timesteps(8)
            g = torch.Generator().manual_seed(11)
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * float(s.init_noise_sigma)
            for t in s.timesteps:
                inp = s.scale_model_input(x, t)
                eps = 0.3 * inp + 0.1 * torch.sin(inp)
                x = s.step(eps, t, x, generator=g).prev_sample
            outs.append(x)
        # float rounding of values up to ~100 (σ_max ≈ 14.6); another draw would differ by O(σ)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5 * float(outs[0].abs().max()))
