r"""Brownian-tree noise: the noise of a step from σ̃ to σ̃' drawn as the normalised increment of one Brownian path.

k-diffusion's SDE samplers and diffusers' DPMSolverSDE and CosineDPMSolverMultistep schedulers draw a stochastic
step's fresh noise not from a generator stream but from one Brownian motion W over the VE-view noise levels
σ̃ ∈ [σ̃_lo, σ̃_hi], fixed by an integer seed:

    z(σ̃, σ̃') = (W(σ̃') − W(σ̃)) / √|σ̃' − σ̃|.

Each z is N(0, I) and those of disjoint intervals are independent, so a solver sees exactly the Gaussian noise it
expects; in addition the path does not depend on the step sizes, so refining the grid refines the *same*
Brownian path (which is what makes strong convergence measurable and the samples stable across step counts).

The path is torchsde's Brownian interval (Kidger et al. 2021 [BrownianInterval]) in the configuration diffusers'
``BrownianTreeNoiseSampler`` builds (a halfway tree resolved to 1e-6, SeedSequence pools of 24 words, no Lévy
area), re-implemented here so that a twin of those schedulers draws *bit for bit* the numbers diffusers draws (the
same seed: the step's generator's ``initial_seed()``, or a fresh random seed without a generator; the same interval:
the schedule's σ̃ range in float32, as those classes take their config's σ_min, σ_max; the same float32 query
points), without torchsde and faster. The construction:

* The interval [t0, t1] (ends rounded to 6 decimals) is split at its rounded halfway point, and so on down, into a
  binary tree that depends only on [t0, t1]; a node at depth d with path bits k (0 left, 1 right, read from the
  root) owns the seed ``SeedSequence(entropy, spawn_key=(k, d), pool_size=24).generate_state(1)[0]``, and its
  noise is ``torch.randn`` from a generator of that seed, of the sample's shape, dtype and device.
* The root's increment is randn(initial seed) · √(t1 − t0), the initial seed the first word of
  ``SeedSequence(entropy, pool_size=24)``. A node [s, e] with midpoint m and increment W passes to its children the
  Brownian-bridge split W_left = (m − s) W / (e − s) + √((m − s)(e − m)/(e − s)) · noise, W_right = W − W_left.
* A query [ta, tb] (clamped to the interval, rounded to 6 decimals) is the ordered sum of the increments of the
  fewest tree nodes that tile it.

Every float operation above is the one torchsde performs, in its order, so the values agree exactly; only the
bookkeeping differs. torchsde recomputes a node from the root whenever its 45-entry LRU cache has dropped an
ancestor, and a sampling loop's two new points per step (each ~24 levels deep) overflow that cache; here each node's
increment is computed at most once per query and its seed once per tree, and between queries the cache keeps what a
loop moving monotonically in σ̃ needs again (:meth:`_HalfwayTree._keep`), so that such a loop computes every node
exactly once, within at most ``CACHE_LIMIT`` sample-sized tensors. On the CPU the float32/float64 arithmetic runs in
numpy (same IEEE operations, a fraction of torch's per-call cost on small samples).

Deviations from diffusers (where its result is not a number or never comes): a query of equal points returns zeros
(diffusers divides 0 by 0: NaN), as does one whose two points round to the same 1e-6 grid point (torchsde recurses
without end); a query point outside the interval is clamped as torchsde clamps it, without torchsde's warning.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np
import torch

# resolution of the tree (torchsde's ``tol`` in diffusers' configuration: query points rounded to 6 decimals) and
# the size of the SeedSequence entropy pool
_DIGITS = 6
_POOL = 24

CACHE_LIMIT = 64
"""Most sample-sized increments a tree (one per seed) keeps between queries; during a query it holds, on top of the
kept ones, the query's tiles and the nodes on the way down to them. What a monotone loop needs again is at most two
increments per level of the tree plus one per level below where its last two points part: ~50–60 for σ̃ ranges
of 15–80 (24–27 levels), so the limit is rarely reached; past it the deepest increments are dropped, which costs
recomputation, never different values."""


_INIT_B, _MULT_B, _MASK = 0x8B51F9DD, 0x58F38DED, 0xFFFFFFFF


def _seed(entropy: int, spawn_key: tuple[int, ...] = ()) -> int:
    """``SeedSequence(entropy, spawn_key=spawn_key, pool_size=24).generate_state(4)[0]``, the noise seed of a node
    (torchsde also draws seeds for Lévy areas, unused here): the first output word is a fixed hash of the first pool
    word (numpy's ``generate_state``), taken here without that method's per-call overhead."""
    word = int(np.random.SeedSequence(entropy, spawn_key=spawn_key, pool_size=_POOL).pool[0]) ^ _INIT_B
    word = word * (_INIT_B * _MULT_B & _MASK) & _MASK
    return word ^ word >> 16


class _Node:
    """One interval of the halfway tree; children are made on demand, and seeds once per node."""

    __slots__ = ("start", "end", "parent", "key", "depth", "mid", "left", "right", "seed")

    def __init__(self, start: float, end: float, parent: _Node | None, key: int, depth: int):
        self.start, self.end, self.parent, self.key, self.depth = start, end, parent, key, depth
        self.mid = self.left = self.right = self.seed = None

    def split(self) -> None:
        mid = round(0.5 * (self.end + self.start), _DIGITS)
        if not self.start < mid < self.end:  # 1e-6 apart: no rounded query point lies inside (torchsde: no end)
            raise RuntimeError(f"Brownian tree: cannot split [{self.start}, {self.end}] at the 1e-6 resolution")
        self.mid = mid
        self.left = _Node(self.start, mid, self, 2 * self.key, self.depth + 1)
        self.right = _Node(mid, self.end, self, 2 * self.key + 1, self.depth + 1)


class _HalfwayTree:
    """The Brownian path of one seed over [t0, t1] (float32 values as Python floats): increments of float queries."""

    def __init__(self, t0: float, t1: float, shape, dtype: torch.dtype, device: torch.device, entropy: int):
        self.shape, self.dtype, self.device, self.entropy = tuple(shape), dtype, device, entropy
        self.generator = torch.Generator(device)  # re-seeded per node: the stream restarts exactly as a new one would
        # numpy's float32/float64 arithmetic rounds as torch's CPU kernels do (IEEE, the scalar cast to the array's
        # dtype first) at a fraction of the per-call cost: increments on the CPU are numpy arrays sharing torch's
        # draws; torch for other devices and for half precision, whose arithmetic runs in float32
        self.numpy = torch.device(device).type == "cpu" and dtype in (torch.float32, torch.float64)
        self.scratch = torch.empty(self.shape, dtype=dtype, device=device)
        self.scratch_view = self.scratch.numpy() if self.numpy else self.scratch
        self.root = _Node(round(t0, _DIGITS), round(t1, _DIGITS), None, 0, 0)
        # the root's increment spans the unrounded interval, as torchsde draws it
        self.cache = {self.root: self._randn(_seed(entropy)) * math.sqrt(t1 - t0)}
        self.last, self.direction = None, -1  # the previous query; queries move down (-1) in σ̃, or up (1)
        self.randn_calls = 0  # children pairs computed (one randn each), for the tests and benchmarks

    def _randn(self, seed: int):
        """The noise of ``seed`` (torch.randn from a generator of that seed) in the scratch buffer, overwritten
        by the next draw (normal_ on it is what torch.randn runs)."""
        self.generator.manual_seed(seed)
        self.scratch.normal_(generator=self.generator)
        return self.scratch_view

    def _children(self, node: _Node, W):
        if node.seed is None:
            node.seed = _seed(self.entropy, (node.key, node.depth))
        self.randn_calls += 1
        s, m, e = node.start, node.mid, node.end
        h_reciprocal = 1 / (e - s)
        left_diff, right_diff = m - s, e - m
        noise = self._randn(node.seed)
        # the Brownian bridge at m given W, in torchsde's operation order, (Δl·W)·(1/h) + √(Δl·Δr/h)·noise, and
        # the right half as W minus the left; the in-place steps round as their out-of-place forms
        left = W * left_diff
        left *= h_reciprocal
        noise *= math.sqrt(left_diff * right_diff * h_reciprocal)
        left += noise
        return left, W - left

    def _tiling(self, ta: float, tb: float) -> list[_Node]:
        """The fewest nodes tiling [ta, tb], left to right, splitting nodes on the way as needed."""
        out, stack = [], [(self.root, ta, tb)]
        while stack:
            node, lo, hi = stack.pop()
            if lo == node.start and hi == node.end:
                out.append(node)
                continue
            if node.mid is None:
                node.split()
            mid = node.mid
            if hi <= mid:
                stack.append((node.left, lo, hi))
            elif lo >= mid:
                stack.append((node.right, lo, hi))
            else:  # right part pushed first so that the left part is tiled (and summed) first
                stack.append((node.right, mid, hi))
                stack.append((node.left, lo, mid))
        return out

    def _keep(self, ta: float, tb: float) -> set:
        """The increments worth keeping after a query of [ta, tb]: those that the next queries of a loop moving
        down in σ̃ reuse. They query [t, ta] or [t, tb] with t < ta; their tilings consist of the left children
        along the paths to ta and tb, of the children of ta's path nodes inside [·, tb] (right children, where
        t's path leaves ta's), and of new nodes below a left child on ta's path. All of them are children of the
        nodes containing ta or tb: at most two per level of ta's path and one per level of tb's below the level
        where the paths part. A loop moving up keeps the mirror image, and a query wider than the previous one on
        both sides both sets (the first query counts as moving down)."""
        keep = {self.root}
        down, up = self.direction <= 0, self.direction >= 0
        for point in (ta, tb):
            node = self.root
            while node.mid is not None and node.start < point < node.end:
                mid = node.mid
                if down:
                    if point >= mid:
                        keep.add(node.left)
                    if point == ta and node.end <= tb:
                        keep.add(node.right)
                if up:
                    if point <= mid:
                        keep.add(node.right)
                    if point == tb and node.start >= ta:
                        keep.add(node.left)
                if point == mid:
                    break
                node = node.left if point < mid else node.right
        return keep

    def increment(self, ta: float, tb: float) -> torch.Tensor:
        """W(tb) − W(ta) for ta ≤ tb (already clamped to the interval); may return a cached tensor (read only)."""
        ta, tb = round(ta, _DIGITS), round(tb, _DIGITS)
        if ta == tb:
            return torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        tiles = self._tiling(ta, tb)
        if self.last is not None:  # a query within the previous one keeps the direction
            down, up = ta < self.last[0], tb > self.last[1]
            if down or up:
                self.direction = up - down
        self.last = (ta, tb)
        keep = self._keep(ta, tb)
        cache = self.cache
        # Each tile not known is computed down from its nearest known ancestor (its origin). Held during the query:
        # the tiles, what is kept, the origins, and the nodes on the way down, each of those dropped as soon as
        # both its children are known; nothing is computed twice.
        wanted = keep.union(tiles)
        hold, origins, chains = set(wanted), set(), []
        for tile in tiles:
            chain, node = [], tile
            while node not in cache:
                chain.append(node)
                node = node.parent
            origins.add(node)
            hold.update(chain)
            chains.append(chain)
        for node in [node for node in cache if node not in wanted and node not in origins]:
            del cache[node]
        split = set()
        for chain in chains:
            for child in reversed(chain):
                parent = child.parent
                if parent in split:  # on the way to an earlier tile
                    continue
                split.add(parent)
                left, right = self._children(parent, cache[parent])
                if parent.left in hold:
                    cache[parent.left] = left
                if parent.right in hold:
                    cache[parent.right] = right
                if parent not in wanted:
                    del cache[parent]
        # summed left to right, as torchsde sums the pieces
        W = cache[tiles[0]]
        if len(tiles) > 1:
            W = W + cache[tiles[1]]
            for tile in tiles[2:]:
                W += cache[tile]
        for node in [node for node in cache if node not in keep]:
            del cache[node]
        if len(cache) > CACHE_LIMIT:  # the deepest span the least of the interval: the fewest later queries need them
            for node in sorted(cache, key=lambda node: node.depth)[CACHE_LIMIT:]:
                del cache[node]
        return torch.from_numpy(np.asarray(W)) if self.numpy else W  # (a 0-dim sample's arithmetic gives scalars)


_DIFFUSERS_MODULE = "diffusers.schedulers.scheduling_dpmsolver_sde"


def _stand_in():
    """What replaces diffusers' ``BrownianTreeNoiseSampler`` in its module, if anything does: a path prescribed in
    its place (the accuracy bench's, :class:`unisde.bench.exact.PrescribedBrownian`) drives this noise too, as it
    drives diffusers' schedulers. Looked up without importing diffusers (its module imports torchsde)."""
    module = sys.modules.get(_DIFFUSERS_MODULE)
    found = getattr(module, "BrownianTreeNoiseSampler", None)
    return None if found is None or getattr(found, "__module__", None) == _DIFFUSERS_MODULE else found


class BrownianTreeNoise:
    """z(σ̃, σ̃') for one sampling loop: built on first use from the first draw's sample (shape, dtype, device)
    and generator, then queried with the VE-view levels of each stochastic step.

    ``ve_lo``, ``ve_hi``: the interval of the Brownian path (σ̃_lo < σ̃_hi, Python floats); ``seed``: the path's
    seed when fixed (diffusers' ``noise_sampler_seed``; a sequence of one seed per batch item draws each item from
    its own path, as diffusers' batched trees do), else the first draw's generator decides (see above). Whatever
    replaces diffusers' ``BrownianTreeNoiseSampler`` in its module when the first draw comes (see
    :func:`_stand_in`) draws instead, as it would for diffusers' schedulers."""

    def __init__(self, ve_lo: float, ve_hi: float, seed: int | Sequence[int] | None = None):
        if not 0.0 <= ve_lo < ve_hi:
            raise ValueError(f"a Brownian tree needs 0 <= sigma_lo < sigma_hi, got {ve_lo}, {ve_hi}")
        self.ve_lo, self.ve_hi = float(ve_lo), float(ve_hi)
        self.seed = seed
        self.trees = self.stand_in = None

    def _build(self, sample: torch.Tensor, generator: torch.Generator | None) -> None:
        seed = self.seed
        if seed is None:
            # diffusers' rule: the generator's seed, else one from the global RNG
            seed = generator.initial_seed() if generator is not None else torch.randint(0, 2**63 - 1, []).item()
        stand_in = _stand_in()
        if stand_in is not None:
            self.stand_in = stand_in(sample, self.ve_lo, self.ve_hi, seed=seed)
            return
        # the interval in float32, as diffusers' sampler holds σ_min and σ_max (torch.as_tensor of a float); σ_min <
        # σ_max, so the sign of an increment is the query's own
        lo, hi = float(np.float32(self.ve_lo)), float(np.float32(self.ve_hi))
        self.batched = isinstance(seed, Sequence)
        if self.batched:
            if len(seed) != sample.shape[0]:
                raise ValueError(f"{len(seed)} Brownian-tree seeds for a batch of {sample.shape[0]}")
            shape, seeds = sample.shape[1:], [int(s) for s in seed]
        else:
            shape, seeds = sample.shape, [int(seed)]
        self.trees = [_HalfwayTree(lo, hi, shape, sample.dtype, sample.device, s) for s in seeds]

    def __call__(
        self, sample: torch.Tensor, ve_from: float, ve_to: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Standard normal noise shaped like ``sample`` for the step from σ̃ = ``ve_from`` to ``ve_to``."""
        if self.trees is None and self.stand_in is None:
            self._build(sample, generator)
        if self.stand_in is not None:
            z = self.stand_in(torch.tensor(ve_from, dtype=torch.float32), torch.tensor(ve_to, dtype=torch.float32))
            return z.to(device=sample.device, dtype=sample.dtype)
        # float32 query points, as diffusers' schedulers keep their sigmas (the path is continuous, not smooth:
        # a query point moved by one float32 ulp changes the increment by ~√ulp)
        a, b = torch.tensor(ve_from, dtype=torch.float32), torch.tensor(ve_to, dtype=torch.float32)
        # diffusers' √|t1 − t0| of 0-dim float32 tensors (torch's float32 sqrt is not always correctly rounded)
        scale = (b - a).abs().sqrt().item()
        a, b = a.item(), b.item()
        ta, tb, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        tree = self.trees[0]
        start, end = tree.root.start, tree.root.end
        ta, tb = min(max(ta, start), end), min(max(tb, start), end)
        if ta == tb or scale == 0.0:
            z = torch.zeros(self._shape(sample), dtype=tree.dtype, device=tree.device)
        else:
            Ws = [t.increment(ta, tb) for t in self.trees]
            W = torch.stack(Ws) if self.batched else Ws[0]
            # (±W)/s: diffusers multiplies by the sign, then divides; both round symmetrically
            z = W / (sign * scale)
        return z.to(device=sample.device, dtype=sample.dtype)

    def _shape(self, sample: torch.Tensor) -> tuple[int, ...]:
        tree = self.trees[0]
        return (len(self.trees), *tree.shape) if self.batched else tree.shape
