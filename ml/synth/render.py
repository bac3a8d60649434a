"""Render a StudySpec as a chest radiograph: a float32 image in 0..1 where 1 is the densest
(brightest on a MONOCHROME2 display).

Coordinates are normalised by the image height (y 0..1 top to bottom, x 0..width/height), so the
same study renders alike at any resolution; noise is scaled so that it looks the same after the
engine's reduction to 320 pixels. Image left is the patient's right (a PA/AP frontal view).
Findings are drawn large enough to stay visible at the model's 224 pixels, as a large
pneumothorax or a lobar consolidation stays visible on a real radiograph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion, gaussian_filter

from ml.synth.draw import spline, stroke, tree
from ml.synth.spec import PRESENT, Sided, StudySpec

SIDES = {"right": -1.0, "left": 1.0}  # patient side -> sign of image x offset from the midline


@dataclass
class Frame:
    """The coordinate grids and the study's landmark positions."""

    x: np.ndarray
    y: np.ndarray
    height: int
    cx: float
    apex: float
    base: float
    halfwidth: float
    medial: float


def frontal_shape(spec: StudySpec, height: int) -> tuple[int, int]:
    """(rows, columns) of the frontal image: the study's aspect, an even number of columns."""
    return height, round(height * spec.aspect / 2) * 2


def render_frontal(spec: StudySpec, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng([spec.texture_seed, 1])
    f = _frame(spec, height, width)
    a = spec.anatomy
    image = _body(f, a.soft_density)
    lungs = {side: _lung_mask(f, s, f.x, f.y) for side, s in SIDES.items()}
    lung_any = lungs["right"] | lungs["left"]
    image[lung_any] = a.lung_density
    image += _lung_texture(rng, f, lung_any)
    markings = _markings(rng, f) * lung_any
    ptx_space = np.zeros_like(lung_any)
    if spec.pneumothorax is not None:
        ptx_space = _pneumothorax(image, f, spec.pneumothorax, a.lung_density, lungs)
    image += markings * 0.16 * ~ptx_space
    if spec.consolidation is not None:
        _consolidation(image, rng, f, spec.consolidation, lungs, a.soft_density)
    if spec.effusion is not None:
        _effusion(image, f, spec.effusion, a.soft_density)
    _mediastinum(image, f, spec, a.soft_density)
    if a.gastric_bubble:
        _gastric_bubble(image, f)
    image += _bones(rng, f, a.bone_gain)
    _devices(image, rng, f, spec.devices)
    return _finish(image, rng, f, spec)


def _frame(spec: StudySpec, height: int, width: int) -> Frame:
    a = spec.anatomy
    aspect = width / height
    cols = (np.arange(width, dtype=np.float32) + 0.5) / height
    rows = (np.arange(height, dtype=np.float32) + 0.5) / height
    x, y = np.meshgrid(cols, rows)
    cx0, cy0 = aspect / 2, 0.5
    theta = np.deg2rad(a.rotation_deg)
    xr = cx0 + (x - cx0) * np.cos(theta) - (y - cy0) * np.sin(theta)
    yr = cy0 + (x - cx0) * np.sin(theta) + (y - cy0) * np.cos(theta)
    magnify = 1.04 if spec.view == "AP" else 1.0
    return Frame(
        x=xr.astype(np.float32), y=yr.astype(np.float32), height=height,
        cx=aspect / 2 + a.shift_x, apex=a.apex_y + a.shift_y, base=a.base_y + a.shift_y,
        halfwidth=a.lung_halfwidth * magnify, medial=a.mediastinum_halfwidth * 0.75,
    )


def _body(f: Frame, soft: float) -> np.ndarray:
    d = np.abs(f.x - f.cx)
    shoulder = np.clip((f.y - 0.02) / 0.12, 0, 1) ** 0.5
    body_half = f.halfwidth * 1.22 * (0.45 + 0.55 * shoulder)
    body = d < body_half
    image = np.full(f.x.shape, 0.03, dtype=np.float32)
    edge = np.clip((body_half - d) / 0.04, 0, 1)  # soft tissue thins towards the skin line
    image[body] = (0.03 + (soft - 0.03) * (0.55 + 0.45 * edge))[body]
    return image


def _dome(f: Frame, s: float, x: np.ndarray) -> np.ndarray:
    d = s * (x - f.cx)
    u = np.clip((d - f.medial) / (f.halfwidth - f.medial), 0, 1)
    base = f.base + (0.025 if s > 0 else -0.01)
    return base - 0.065 * 4 * u * (1.15 - u)


def _lung_mask(f: Frame, s: float, x: np.ndarray, y: np.ndarray, dome: bool = True) -> np.ndarray:
    d = s * (x - f.cx)
    base = f.base + (0.025 if s > 0 else -0.01)
    t = (y - f.apex) / (base - f.apex)
    profile = np.clip(t / 0.42, 0, 1) ** 0.5 * (0.94 + 0.08 * np.clip(t, 0, 1))
    lateral = f.medial + (f.halfwidth - f.medial) * profile
    mask = (t > 0) & (d > f.medial) & (d < lateral)
    if dome:
        mask &= y < _dome(f, s, x)
    else:
        mask &= y < base
    return mask


def _lung_texture(rng: np.random.Generator, f: Frame, lungs: np.ndarray) -> np.ndarray:
    noise = rng.standard_normal(f.x.shape).astype(np.float32)
    field = gaussian_filter(noise, 0.012 * f.height)
    field /= field.std() + 1e-6
    return 0.018 * field * lungs


def _markings(rng: np.random.Generator, f: Frame) -> np.ndarray:
    """Vessels fanning out from each hilum; they stop at the pleura."""
    by_weight: dict[float, list[np.ndarray]] = {}
    for s in SIDES.values():
        hilum = (f.cx + s * (f.medial + 0.03), f.apex + 0.42 * (f.base - f.apex))
        lateral = 0.0 if s > 0 else np.pi
        for angle in np.linspace(-1.3, 1.3, 7):
            direction = lateral + s * angle + rng.normal(0, 0.1)
            for path, w in tree(rng, hilum, direction, 0.12, 2, 0.45):
                by_weight.setdefault(round(w, 3), []).append(spline(path, 24))
    image = np.zeros(f.x.shape, dtype=np.float32)
    for w, paths in by_weight.items():
        image = np.maximum(image, w * stroke(f.x.shape, paths, 0.003 + 0.004 * w))
    return image


def _pneumothorax(image: np.ndarray, f: Frame, ptx: Sided, lung_density: float,
                  lungs: dict[str, np.ndarray]) -> np.ndarray:
    """Collapse one lung toward its hilum; the space left is black air with no markings."""
    s = SIDES[ptx.side]
    c = ptx.extent
    hx, hy = f.cx + s * (f.medial + 0.02), f.apex + 0.45 * (f.base - f.apex)
    collapsed = _lung_mask(f, s, hx + (f.x - hx) / c, hy + (f.y - hy) / c)
    space = lungs[ptx.side] & ~collapsed
    image[space] = lung_density * 0.15
    image[collapsed] += 0.3 * (1 - c)  # the airless lung is denser
    line_px = max(1, round(0.005 * f.height))
    edge = collapsed & ~binary_erosion(collapsed, iterations=line_px)
    image[edge & lungs[ptx.side]] += 0.22
    return space


def _consolidation(image: np.ndarray, rng: np.random.Generator, f: Frame, cons: Sided,
                   lungs: dict[str, np.ndarray], soft: float) -> None:
    sides = ["right", "left"] if cons.side == "bilateral" else [cons.side]
    for side in sides:
        s = SIDES[side]
        zone = _lobe(f, s, cons.lobe if side == cons.side else "lower") & lungs[side]
        blob = gaussian_filter(rng.standard_normal(f.x.shape).astype(np.float32), 0.03 * f.height)
        blob /= blob.std() + 1e-6
        patchy = cons.state != PRESENT
        keep = zone & (blob > (0.3 if patchy else -1.2))
        alpha = gaussian_filter(keep.astype(np.float32), 0.006 * f.height) * cons.extent
        fluffy = gaussian_filter(rng.standard_normal(f.x.shape).astype(np.float32), 0.008 * f.height)
        alpha *= np.clip(0.92 + 0.08 * fluffy / (fluffy.std() + 1e-6), 0.6, 1.0)
        target = soft * 1.2  # a lobar consolidation is about as white as the heart
        image += alpha * (target - image)
        if not patchy:
            _bronchograms(image, rng, f, s, keep, alpha)


def _lobe(f: Frame, s: float, lobe: str) -> np.ndarray:
    span = f.base - f.apex
    d = s * (f.x - f.cx)
    fissure = f.apex + 0.45 * span + 0.08 * (d - f.medial)
    oblique = f.apex + 0.25 * span + 0.9 * (d - f.medial)
    if lobe == "upper":
        return f.y < fissure
    if lobe == "middle":
        return (f.y >= fissure) & (f.y < oblique + 0.2 * span) & (d < f.halfwidth * 0.75)
    return f.y >= np.maximum(fissure, oblique * 0 + f.apex + 0.52 * span)


def _bronchograms(image: np.ndarray, rng: np.random.Generator, f: Frame, s: float,
                  region: np.ndarray, alpha: np.ndarray) -> None:
    rows, cols = np.nonzero(region)
    if len(rows) == 0:
        return
    paths = []
    for _ in range(3):
        k = rng.integers(len(rows))
        origin = ((cols[k] + 0.5) / f.height, (rows[k] + 0.5) / f.height)
        for path, _w in tree(rng, origin, rng.uniform(0, 2 * np.pi), 0.06, 1, 0.4):
            paths.append(spline(path, 16))
    air = stroke(f.x.shape, paths, 0.005) * alpha
    image -= 0.16 * air


def _effusion(image: np.ndarray, f: Frame, eff: Sided, soft: float) -> None:
    """Dependent fluid: a meniscus rising laterally, blunting the costophrenic angle."""
    sides = ["right", "left"] if eff.side == "bilateral" else [eff.side]
    for side in sides:
        s = SIDES[side]
        region = _lung_mask(f, s, f.x, f.y, dome=False)
        base = f.base + (0.025 if s > 0 else -0.01)
        d = s * (f.x - f.cx)
        u = np.clip((d - f.medial) / (f.halfwidth - f.medial), 0, 1)
        level = base - eff.extent * (base - f.apex) - 0.06 * u**2
        depth = np.clip((f.y - level) / 0.03, 0, 1)
        fluid = (region & (f.y > level - 0.03)) * depth
        alpha = gaussian_filter(fluid.astype(np.float32), 0.008 * f.height)
        image += alpha * (soft * 1.02 - image)


def _mediastinum(image: np.ndarray, f: Frame, spec: StudySpec, soft: float) -> None:
    a = spec.anatomy
    d = f.x - f.cx
    top = np.clip((f.y - 0.0) / 0.1, 0, 1)
    column = (np.abs(d) < a.mediastinum_halfwidth * (0.8 + 0.3 * top)) & (f.y < f.base + 0.05)
    image[column] = np.maximum(image[column], soft * 1.12)
    knob = (d - a.mediastinum_halfwidth * 0.95) ** 2 + (f.y - (f.apex + 0.16)) ** 2 < 0.028**2
    image[knob] = np.maximum(image[knob], soft * 1.1)
    heart = np.clip((1.0 - _heart_radius(f, spec)) / 0.08, 0, 1).astype(np.float32)
    image += heart * (np.maximum(image, soft * 1.12) - image)
    trachea = (np.abs(d) < 0.012) & (f.y < f.apex + 0.18)
    image[trachea] -= 0.12


def _heart_radius(f: Frame, spec: StudySpec) -> np.ndarray:
    """Squared elliptic radius from the heart's centre: < 1 inside the heart shadow."""
    heart_w = spec.ctr * 2 * f.halfwidth
    rx, ry = heart_w / 2, spec.anatomy.heart_height * (1.0 + 0.8 * (spec.ctr - 0.4)) * 0.6
    hcx, hcy = f.cx + 0.16 * heart_w, f.base - ry * 0.45
    return ((f.x - hcx) / rx) ** 2 + ((f.y - hcy) / ry) ** 2


def finding_region(spec: StudySpec, finding: str, height: int, width: int) -> np.ndarray | None:
    """Where `finding` is drawn on the frontal image of (height, width): a boolean mask, or
    None when the study does not have it or it has no compact region (Support Devices: tubes
    and leads cross the whole film). Same geometry as the renderer: the heart shadow
    (Cardiomegaly), the fluid below the meniscus (Pleural Effusion), the air band between chest
    wall and collapsed lung (Pneumothorax), the opacified lobe (Consolidation, Lung Opacity)."""
    f = _frame(spec, height, width)
    if finding == "Cardiomegaly":
        return _heart_radius(f, spec) < 1.0 if spec.cardiomegaly else None
    if finding == "Pleural Effusion" and spec.effusion is not None:
        return _any_side(spec.effusion, lambda side: _effusion_region(f, spec.effusion, side))
    if finding == "Pneumothorax" and spec.pneumothorax is not None:
        ptx = spec.pneumothorax
        s = SIDES[ptx.side]
        hx, hy = f.cx + s * (f.medial + 0.02), f.apex + 0.45 * (f.base - f.apex)
        collapsed = _lung_mask(f, s, hx + (f.x - hx) / ptx.extent, hy + (f.y - hy) / ptx.extent)
        return _lung_mask(f, s, f.x, f.y) & ~collapsed
    if finding in ("Consolidation", "Lung Opacity") and spec.consolidation is not None:
        cons = spec.consolidation

        def lobe(side: str) -> np.ndarray:
            s = SIDES[side]
            zone = _lobe(f, s, cons.lobe if side == cons.side else "lower")
            return zone & _lung_mask(f, s, f.x, f.y)

        return _any_side(cons, lobe)
    return None


def _any_side(sided: Sided, region: Callable[[str], np.ndarray]) -> np.ndarray:
    sides = ["right", "left"] if sided.side == "bilateral" else [sided.side]
    masks = [region(side) for side in sides]
    return np.logical_or.reduce(masks)


def _effusion_region(f: Frame, eff: Sided, side: str) -> np.ndarray:
    s = SIDES[side]
    base = f.base + (0.025 if s > 0 else -0.01)
    u = np.clip((s * (f.x - f.cx) - f.medial) / (f.halfwidth - f.medial), 0, 1)
    level = base - eff.extent * (base - f.apex) - 0.06 * u**2
    return _lung_mask(f, s, f.x, f.y, dome=False) & (f.y > level)


def _gastric_bubble(image: np.ndarray, f: Frame) -> None:
    bx, by = f.cx + 0.17, f.base + 0.07
    bubble = ((f.x - bx) / 0.05) ** 2 + ((f.y - by) / 0.03) ** 2 < 1
    image[bubble] -= 0.18


def _bones(rng: np.random.Generator, f: Frame, gain: float) -> np.ndarray:
    shape = f.x.shape
    paths = []
    span = f.base - f.apex
    for s in SIDES.values():
        for k in range(10):
            y0 = f.apex - 0.015 + k * span / 10.5
            d = np.linspace(0.02, f.halfwidth + 0.03, 12)
            yc = y0 - 0.03 + 0.5 * d - 0.65 * d**2
            paths.append(np.column_stack([f.cx + s * d, yc]))
        clav = np.array([[f.cx + s * 0.03, f.apex + 0.02], [f.cx + s * 0.18, f.apex - 0.03],
                         [f.cx + s * (f.halfwidth + 0.04), f.apex - 0.05]])
        paths.append(spline(clav, 20))
    ribs = stroke(shape, paths, 0.016)
    spine = (np.abs(f.x - f.cx) < 0.028) & (f.y < f.base + 0.2)
    bumps = 0.5 + 0.5 * np.cos(2 * np.pi * f.y / 0.045)
    return gain * (0.05 * ribs + 0.08 * spine * bumps)


def _devices(image: np.ndarray, rng: np.random.Generator, f: Frame, kinds: tuple[str, ...]) -> None:
    """Radiopaque tubes, lines and hardware: the brightest things on the film."""
    paths = []
    cx, apex, base = f.cx, f.apex, f.base
    if "ett" in kinds:
        paths.append(np.array([[cx, -0.02], [cx + 0.003, apex + 0.05], [cx, apex + 0.12]]))
    if "ng" in kinds:  # along the oesophagus, left of the spine, into the stomach
        paths.append(np.array([[cx + 0.01, -0.02], [cx + 0.05, 0.4], [cx + 0.08, base],
                               [cx + 0.14, base + 0.08], [cx + 0.22, base + 0.1]]))
    if "cvc" in kinds:  # right subclavian line: across the lung apex to the SVC
        paths.append(np.array([[cx - f.halfwidth - 0.04, apex - 0.03], [cx - 0.2, apex + 0.04],
                               [cx - 0.06, apex + 0.1], [cx - 0.035, apex + 0.22]]))
    if "pacemaker" in kinds:
        gx, gy = cx + 0.26, apex + 0.03
        box = (np.abs(f.x - gx) < 0.045) & (np.abs(f.y - gy) < 0.032)
        image[box] = 1.0
        paths.append(np.array([[gx - 0.02, gy], [cx + 0.05, apex + 0.08], [cx - 0.02, apex + 0.3],
                               [cx + 0.08, base - 0.08]]))
    if "ecg" in kinds:
        for _ in range(4):
            ex, ey = cx + rng.uniform(-0.3, 0.3), rng.uniform(apex + 0.05, base - 0.05)
            ring = np.abs(np.hypot(f.x - ex, f.y - ey) - 0.018) < 0.005
            image[ring] = 1.0
            paths.append(np.array([[ex, ey], [ex + rng.uniform(-0.2, 0.2), ey + 0.2],
                                   [ex + rng.uniform(-0.3, 0.3), 1.05]]))
    if paths:
        lines = stroke(image.shape, [spline(p, 40) for p in paths], 0.022)
        image += lines * (1.0 - image)


def _finish(image: np.ndarray, rng: np.random.Generator, f: Frame, spec: StudySpec) -> np.ndarray:
    a = spec.anatomy
    scale = f.height / 512
    image = gaussian_filter(image, a.blur * scale)
    image += a.heel * (f.x - f.cx)
    image = np.clip(image, 0, 1) ** a.gamma
    noise = rng.standard_normal(image.shape).astype(np.float32) * (a.noise * scale)
    return np.clip(image + noise, 0, 1).astype(np.float32)


def render_lateral(spec: StudySpec, height: int, width: int) -> np.ndarray:
    """A left lateral view: anterior to the image left, spine on the right, the heart anterior
    and low, fluid filling the posterior costophrenic sulcus, devices as vertical lines."""
    rng = np.random.default_rng([spec.texture_seed, 2])
    f = _frame(spec, height, width)
    a = spec.anatomy
    image = np.full(f.x.shape, 0.03, dtype=np.float32)
    body = ((f.x - f.cx) / (f.halfwidth * 1.1)) ** 2 + ((f.y - 0.5) / 0.62) ** 2 < 1
    image[body] = a.soft_density
    lung = (((f.x - f.cx) / (f.halfwidth * 0.85)) ** 2 + ((f.y - 0.47) / 0.36) ** 2 < 1)
    lung &= f.y < f.base - 0.04 * np.cos((f.x - f.cx) * 6)
    image[lung] = a.lung_density
    image += _lung_texture(rng, f, lung)
    heart_rx = 0.13 + 0.35 * (spec.ctr - 0.4)
    heart = ((f.x - (f.cx - 0.08)) / heart_rx) ** 2 + ((f.y - (f.base - 0.12)) / 0.15) ** 2 < 1
    image[heart & body] = np.maximum(image[heart & body], a.soft_density * 1.1)
    spine = (np.abs(f.x - (f.cx + f.halfwidth * 0.9)) < 0.05) & body
    image[spine] += 0.12 * (0.6 + 0.4 * np.cos(2 * np.pi * f.y[spine] / 0.05))
    if spec.effusion is not None:
        level = f.base - spec.effusion.extent * 0.5 * (f.base - f.apex)
        fluid = lung & (f.y > level - 0.08 * (f.x - f.cx) / f.halfwidth)
        image[fluid] = a.soft_density
    if spec.devices:
        paths = [np.array([[f.cx - 0.02 + 0.02 * k, -0.02], [f.cx + 0.01 * k, f.base]])
                 for k in range(len(spec.devices))]
        lines = stroke(image.shape, paths, 0.01)
        image += lines * (1.0 - image)
    return _finish(image, rng, f, spec)
