r"""The distance to the truth: the sliced Wasserstein-2 distance

    SW₂(X, Y)² = E_θ W₂²(θᵀX, θᵀY)   (θ uniform on the unit sphere; a fixed set of ``projections`` directions),

where each 1-D W₂ between two equal-size empirical sets is the RMS difference of their sorted projections."""

from __future__ import annotations

import math

import torch

_SEED_PROJECTIONS = 99  # slicing directions


def projection_directions(dim: int, count: int, seed: int = _SEED_PROJECTIONS) -> torch.Tensor:
    """``count`` fixed unit directions in R^dim (float64, shape (dim, count)); in 2-D evenly spaced angles."""
    if dim == 2:
        angle = torch.arange(count, dtype=torch.float64) * (math.pi / count)
        return torch.stack([angle.cos(), angle.sin()])
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, count, generator=g, dtype=torch.float64)
    return theta / theta.norm(dim=0, keepdim=True)


def sliced_w2(x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor) -> float:
    """Sliced Wasserstein-2 distance between two equal-size sample sets (rows), in the data's units."""
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    if x.shape != y.shape:
        raise ValueError(
            f"sliced_w2 needs two sets of the same size and dimension, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if not torch.isfinite(x).all():
        return float("inf")
    px, _ = torch.sort(x @ directions, dim=0)
    py, _ = torch.sort(y @ directions, dim=0)
    return float(((px - py) ** 2).mean().sqrt())
