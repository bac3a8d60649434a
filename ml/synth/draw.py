"""Small raster helpers for the phantom renderer: smooth curves and branching trees drawn by
splatting points on a grid and blurring them into strokes of a given width."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def spline(points: np.ndarray, samples: int) -> np.ndarray:
    """A smooth path through control points (Catmull-Rom), as (samples, 2) normalised x, y."""
    pts = np.asarray(points, dtype=np.float64)
    padded = np.vstack([pts[0], pts, pts[-1]])
    segments = len(pts) - 1
    t = np.linspace(0.0, segments, samples, endpoint=False)
    i = np.minimum(t.astype(int), segments - 1)
    u = (t - i)[:, None]
    p0, p1, p2, p3 = padded[i], padded[i + 1], padded[i + 2], padded[i + 3]
    return 0.5 * (
        2 * p1 + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2
        + (-p0 + 3 * p1 - 3 * p2 + p3) * u**3
    )


def splat(canvas: np.ndarray, path: np.ndarray, height: int, weights: np.ndarray | None = None) -> None:
    """Add the path's points (normalised by image height) onto the canvas, in place."""
    cols = np.round(path[:, 0] * height - 0.5).astype(int)
    rows = np.round(path[:, 1] * height - 0.5).astype(int)
    keep = (rows >= 0) & (rows < canvas.shape[0]) & (cols >= 0) & (cols < canvas.shape[1])
    w = np.ones(len(path)) if weights is None else weights
    np.add.at(canvas, (rows[keep], cols[keep]), w[keep])


def stroke(shape: tuple[int, int], paths: list[np.ndarray], width: float) -> np.ndarray:
    """A 0..1 mask of curves `width` wide (normalised units), anti-aliased."""
    height = shape[0]
    canvas = np.zeros(shape, dtype=np.float32)
    for path in paths:
        dense = _densify(path, height)
        splat(canvas, dense, height)
    np.minimum(canvas, 1.0, out=canvas)
    sigma = max(0.6, width * height / 2.5)
    blurred = gaussian_filter(canvas, sigma)
    peak = 1.0 / (np.sqrt(2 * np.pi) * sigma)
    return np.clip(blurred / (0.6 * peak), 0.0, 1.0)


def _densify(path: np.ndarray, height: int) -> np.ndarray:
    """Resample so that consecutive points are under half a pixel apart."""
    steps = np.hypot(*np.diff(path, axis=0).T) * height
    out = [path[:1]]
    for k, n in enumerate(np.ceil(steps * 2.2).astype(int)):
        n = max(n, 1)
        t = np.linspace(0, 1, n + 1)[1:, None]
        out.append(path[k] + (path[k + 1] - path[k]) * t)
    return np.vstack(out)


def tree(rng: np.random.Generator, origin: tuple[float, float], angle: float, length: float,
         depth: int, spread: float) -> list[tuple[np.ndarray, float]]:
    """Branching curves from `origin`, each with a weight falling with generation."""
    branches: list[tuple[np.ndarray, float]] = []
    _grow(rng, np.array(origin), angle, length, depth, spread, 1.0, branches)
    return branches


def _grow(rng: np.random.Generator, start: np.ndarray, angle: float, length: float, depth: int,
          spread: float, weight: float, out: list[tuple[np.ndarray, float]]) -> None:
    steps = 6
    pts = [start]
    heading = angle
    for _ in range(steps):
        heading += rng.normal(0, 0.12)
        pts.append(pts[-1] + length / steps * np.array([np.cos(heading), np.sin(heading)]))
    path = np.array(pts)
    out.append((path, weight))
    if depth <= 0:
        return
    for child in range(2):
        offset = (child - 0.5) * 2 * spread * rng.uniform(0.5, 1.0)
        _grow(rng, path[rng.integers(3, steps + 1)], heading + offset, length * 0.62, depth - 1,
              spread, weight * 0.7, out)
