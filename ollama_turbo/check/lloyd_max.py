"""Scalar quantizers of a Gaussian, computed here: the Lloyd-Max optimum and any table's error.

TurboQuant rotates each block of ``d`` values (a Walsh-Hadamard transform with random signs) so
that, divided by the block's norm, every coordinate is close to N(0, 1/d); it then stores each
coordinate as the index of the nearest centroid. The best table for that distribution is the
Lloyd-Max quantizer: every centroid the mean of its cell, every boundary the midpoint of its two
centroids. Pure numerics (scipy's normal distribution); no table is typed in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm


@dataclass(frozen=True)
class Quality:
    """How a centroid table quantizes N(0, sigma^2)."""

    mse: float          # mean squared error per value
    optimum_mse: float  # the Lloyd-Max table's, same size
    max_offset: float   # largest |centroid - optimum centroid|, in units of sigma

    @property
    def ratio(self) -> float:
        return self.mse / self.optimum_mse


def _cell_moments(a: float, b: float, sigma: float) -> tuple[float, float, float]:
    """P, E[X; cell] and E[X^2; cell] of X ~ N(0, sigma^2) on the cell (a, b)."""
    alpha, beta = a / sigma, b / sigma
    p = norm.cdf(beta) - norm.cdf(alpha)
    pdf_a = 0.0 if math.isinf(alpha) else norm.pdf(alpha)
    pdf_b = 0.0 if math.isinf(beta) else norm.pdf(beta)
    m1 = sigma * (pdf_a - pdf_b)
    ta = 0.0 if math.isinf(alpha) else alpha * pdf_a
    tb = 0.0 if math.isinf(beta) else beta * pdf_b
    m2 = sigma * sigma * (p + ta - tb)
    return p, m1, m2


def boundaries(centroids: Sequence[float]) -> list[float]:
    c = sorted(centroids)
    return [-math.inf, *[(x + y) / 2 for x, y in zip(c, c[1:], strict=False)], math.inf]


def mse(centroids: Sequence[float], sigma: float) -> float:
    """Mean squared error of nearest-centroid quantization of N(0, sigma^2) with this table."""
    c = sorted(centroids)
    edges = boundaries(c)
    total = 0.0
    for i, ci in enumerate(c):
        p, m1, m2 = _cell_moments(edges[i], edges[i + 1], sigma)
        total += m2 - 2 * ci * m1 + ci * ci * p
    return total


def optimum(levels: int, sigma: float) -> list[float]:
    """The Lloyd-Max centroids for ``levels`` levels of N(0, sigma^2), by Lloyd's iteration."""
    return [sigma * x for x in _standard(levels)]


@functools.cache
def _standard(levels: int, iterations: int = 5000, tol: float = 1e-11) -> tuple[float, ...]:
    """The Lloyd-Max centroids of N(0, 1), vectorised over the cells."""
    c = norm.ppf((np.arange(levels) + 0.5) / levels)
    for _ in range(iterations):
        edges = np.concatenate(([-np.inf], (c[1:] + c[:-1]) / 2, [np.inf]))
        p = norm.cdf(edges[1:]) - norm.cdf(edges[:-1])
        new = (norm.pdf(edges[:-1]) - norm.pdf(edges[1:])) / p
        if np.max(np.abs(new - c)) < tol:
            c = new
            break
        c = new
    return tuple(float(x) for x in c)


def quality(centroids: Sequence[float], sigma: float) -> Quality:
    best = optimum(len(centroids), sigma)
    offset = max(abs(x - y) for x, y in zip(sorted(centroids), best, strict=True)) / sigma
    return Quality(mse(centroids, sigma), mse(best, sigma), offset)
