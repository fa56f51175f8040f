"""unisde's Brownian tree (unisde/samplers/brownian.py) against diffusers' ``BrownianTreeNoiseSampler`` (torchsde's
Brownian interval), live and bit for bit: the same tensors for the same seed, interval and float32 query points,
over shapes, dtypes, σ̃ ranges and query orders; the cache stays within its documented bound; torchsde is not needed."""

import math
import random
import sys

import numpy as np
import pytest
import torch

from unisde.samplers import brownian
from unisde.samplers.brownian import CACHE_LIMIT, BrownianTreeNoise

# torchsde warns when a float32 query point lies outside the interval rounded to 1e-6 (and clamps it)
pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")

DDPM = (0.0292, 14.6)  # SD's σ range
EDM = (0.002, 80.0)


def reference():
    """diffusers' module of ``BrownianTreeNoiseSampler`` (it needs torchsde; unisde's tree does not)."""
    return pytest.importorskip("diffusers.schedulers.scheduling_dpmsolver_sde")


def f32(v: float) -> float:
    return float(np.float32(v))


def dpmpp_sde_queries(lo: float, hi: float, steps: int) -> list[tuple[float, float]]:
    """The query points of dpmpp_sde / DPMSolverSDE on a geometric grid from hi to lo: per step (σ̃_i, σ̃_m) and
    (σ̃_i, σ̃_{i+1}), the midpoint in −log σ̃ with r = ½, all in float32 as diffusers computes them."""
    sigmas = torch.tensor(np.geomspace(hi, lo, steps + 1), dtype=torch.float32)
    tau = sigmas.log().neg()
    out = []
    for i in range(steps):
        tau_mid = tau[i] + (tau[i + 1] - tau[i]) * torch.tensor(0.5)
        start, mid, end = (float(v.neg().exp()) for v in (tau[i], tau_mid, tau[i + 1]))
        out += [(start, mid), (start, end)]
    return out


def both(shape, dtype, lo, hi, seed, queries):
    """(diffusers' draws, unisde's draws, unisde's noise object) for one query sequence. Diffusers' draws come in
    the sample's dtype, except for a 0-dim half-precision sample (its division by the float32 √Δσ̃ promotes): the
    noise of a sampler is the sample's dtype, the cast any caller makes."""
    x = torch.zeros(shape, dtype=dtype)
    ref = reference().BrownianTreeNoiseSampler(x, lo, hi, seed=seed)
    theirs = [
        ref(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)).to(dtype) for a, b in queries
    ]
    noise = BrownianTreeNoise(lo, hi, seed=seed)
    ours = [noise(x, a, b, None) for a, b in queries]
    return theirs, ours, noise


def assert_identical(theirs, ours):
    for k, (a, b) in enumerate(zip(theirs, ours)):
        assert a.dtype == b.dtype and a.shape == b.shape, k
        assert torch.equal(a, b), f"query {k}: max |Δ| = {(a.double() - b.double()).abs().max().item()}"


@pytest.mark.parametrize(
    "shape, dtype, interval, seed",
    [
        ((1,), torch.float32, DDPM, 0),
        ((8, 1, 8, 8), torch.float32, DDPM, 1234),
        ((8, 1, 8, 8), torch.float32, EDM, 2**63 - 2),
        ((2, 4, 16, 16), torch.float32, EDM, 7),
        ((3, 5), torch.float64, DDPM, 99),
        ((3, 5), torch.float64, EDM, 5),
        ((2, 3, 4), torch.bfloat16, DDPM, 11),
        ((2, 3, 4), torch.float16, EDM, 12),
        ((), torch.float32, EDM, 13),
        ((), torch.bfloat16, DDPM, 14),
    ],
)
def test_dpmpp_sde_sequence_is_diffusers_bit_for_bit(shape, dtype, interval, seed):
    lo, hi = interval
    theirs, ours, _ = both(shape, dtype, lo, hi, seed, dpmpp_sde_queries(lo, hi, 20))
    assert_identical(theirs, ours)


def test_long_sequence_within_the_cache_bound_is_bit_for_bit():
    """200 steps: the cache evicts all along, never more than CACHE_LIMIT increments, and nothing is drawn twice
    for a monotone loop (each node's children pair exactly once)."""
    lo, hi = DDPM
    queries = dpmpp_sde_queries(lo, hi, 200)
    theirs, ours, noise = both((4,), torch.float32, lo, hi, 3, queries)
    assert_identical(theirs, ours)
    tree = noise.trees[0]
    parents, stack = 0, [tree.root]
    while stack:  # every split node of the tree was drawn exactly once
        node = stack.pop()
        if node.mid is not None:
            parents += 1
            stack += [node.left, node.right]
    assert tree.randn_calls <= parents


def test_cache_holds_at_most_the_documented_number_of_tensors():
    lo, hi = EDM
    x = torch.zeros(2, 3)
    noise = BrownianTreeNoise(lo, hi, seed=8)
    rng = random.Random(0)
    monotone = dpmpp_sde_queries(lo, hi, 60)
    scattered = [(rng.uniform(lo, hi), rng.uniform(lo, hi)) for _ in range(60)]
    for a, b in monotone + scattered:
        noise(x, a, b, None)
        assert len(noise.trees[0].cache) <= CACHE_LIMIT
    assert CACHE_LIMIT <= 64


@pytest.mark.parametrize("interval", [DDPM, EDM])
def test_random_repeated_and_reversed_queries(interval):
    lo, hi = interval
    rng = random.Random(5)
    points = [f32(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(25)]
    queries = [(points[k], points[k + 1]) for k in range(24)]  # random order, either direction
    queries += [queries[3], queries[3], queries[10]]  # repeated
    queries += [(b, a) for a, b in queries[:6]]  # reversed: from < to, the negated increment
    queries += [(f32(lo), f32(hi)), (f32(hi), f32(lo)), (f32(hi), points[0]), (points[1], f32(lo))]  # the ends
    theirs, ours, _ = both((2, 3), torch.float32, lo, hi, 77, queries)
    assert_identical(theirs, ours)
    reversed_pairs = zip(ours[27:33], ours[:6])
    assert all(torch.equal(r, -z) for r, z in reversed_pairs)


def test_points_outside_the_interval_are_clamped_as_torchsde_clamps_them():
    """Float32 levels a little outside the interval (diffusers' own do, by an ulp), and farther out."""
    lo, hi = DDPM
    below, above = float(np.nextafter(np.float32(lo), np.float32(0))), float(np.nextafter(np.float32(hi), np.inf))
    queries = [(above, 3.0), (3.0, below), (above, below), (0.01, 1.0), (20.0, 2.0), (30.0, 20.0)]
    theirs, ours, _ = both((5,), torch.float32, lo, hi, 21, queries)
    assert_identical(theirs, ours)
    assert torch.equal(ours[-1], torch.zeros(5))  # both clamped to the top: no increment


def test_batched_seeds_draw_each_item_from_its_own_path():
    lo, hi = DDPM
    seeds = [3, 40, 500]
    x = torch.zeros(3, 2, 4)
    ref = reference().BrownianTreeNoiseSampler(x, lo, hi, seed=seeds)
    noise = BrownianTreeNoise(lo, hi, seed=seeds)
    for a, b in dpmpp_sde_queries(lo, hi, 6):
        theirs = ref(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
        assert torch.equal(theirs, noise(x, a, b, None))
    single = BrownianTreeNoise(lo, hi, seed=40)
    assert torch.equal(single(x[1], 5.0, 1.0, None), noise(x, 5.0, 1.0, None)[1])


def test_seed_from_the_generator_else_from_the_global_rng():
    lo, hi = EDM
    x = torch.zeros(2, 2)
    generator = torch.Generator().manual_seed(2024)
    ref = reference().BrownianTreeNoiseSampler(x, lo, hi, seed=2024)
    assert torch.equal(
        ref(torch.tensor(f32(9.0)), torch.tensor(f32(0.5))), BrownianTreeNoise(lo, hi)(x, 9.0, 0.5, generator)
    )
    torch.manual_seed(6)
    ref = reference().BrownianTreeNoiseSampler(x, lo, hi)
    torch.manual_seed(6)
    ours = BrownianTreeNoise(lo, hi)(x, 9.0, 0.5, None)
    assert torch.equal(ref(torch.tensor(f32(9.0)), torch.tensor(f32(0.5))), ours)


def test_degenerate_queries_return_zeros():
    """Equal points (diffusers: 0/0, NaN) and points that round to one 1e-6 grid point (torchsde recurses without
    end): no increment, zeros."""
    lo, hi = DDPM
    x = torch.zeros(3)
    noise = BrownianTreeNoise(lo, hi, seed=1)
    assert torch.equal(noise(x, 2.0, 2.0, None), torch.zeros(3))
    a = float(np.nextafter(np.float32(2.0), np.float32(3.0)))  # 2.00000024, which rounds to the grid point 2.0
    assert f32(a) != 2.0 and round(f32(a), 6) == 2.0
    assert torch.equal(noise(x, a, 2.0, None), torch.zeros(3))


def test_works_without_torchsde(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchsde", None)  # import torchsde now fails
    lo, hi = DDPM
    z = BrownianTreeNoise(lo, hi, seed=4)(torch.zeros(2, 2), 10.0, 1.0, None)
    assert z.shape == (2, 2) and torch.isfinite(z).all()


def test_a_stand_in_for_diffusers_class_drives_the_noise(monkeypatch):
    """The accuracy bench prescribes the path by replacing diffusers' class in its module (unisde.bench.exact);
    unisde's noise follows the replacement as diffusers' schedulers do."""
    calls = []

    class StandIn:
        def __init__(self, x, sigma_min, sigma_max, seed=None):
            calls.append((sigma_min, sigma_max, seed))
            self.x = x

        def __call__(self, sigma, sigma_next):
            return torch.full_like(self.x, float(sigma - sigma_next))

    monkeypatch.setattr(reference(), "BrownianTreeNoiseSampler", StandIn)
    z = BrownianTreeNoise(0.5, 4.0, seed=9)(torch.zeros(2), 3.0, 1.0, None)
    assert calls == [(0.5, 4.0, 9)] and torch.equal(z, torch.full((2,), 2.0))
    monkeypatch.undo()
    assert brownian._stand_in() is None
