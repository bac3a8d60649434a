"""What a synthetic study contains: anatomy parameters and which findings are drawn, decided by
one seeded generator per study so that the same (seed, index) always gives the same study.

A finding is `present` (drawn large and reported plainly), `uncertain` (drawn small or faint and
reported with a hedge, CheXpert label -1) or absent. The renderer and the report writer both read
only this specification, so labels and pixels cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRESENT = "present"
UNCERTAIN = "uncertain"

# The synthetic findings, in the order the CLI and the evaluation print them.
SYNTH_FINDINGS = (
    "Cardiomegaly",
    "Pleural Effusion",
    "Pneumothorax",
    "Consolidation",
    "Lung Opacity",
    "Support Devices",
)

DEVICE_KINDS = ("ett", "ng", "cvc", "pacemaker", "ecg")


@dataclass(frozen=True)
class Anatomy:
    shift_x: float
    shift_y: float
    rotation_deg: float
    scale: float
    apex_y: float
    base_y: float
    lung_halfwidth: float
    mediastinum_halfwidth: float
    dome_height: float
    lung_density: float
    soft_density: float
    bone_gain: float
    heart_height: float
    gamma: float
    noise: float
    blur: float
    heel: float
    gastric_bubble: bool


@dataclass(frozen=True)
class Sided:
    """A finding on one side (right or left is the patient's side) or both, with its extent."""

    state: str
    side: str  # "right" | "left" | "bilateral"
    extent: float
    lobe: str = ""


@dataclass(frozen=True)
class StudySpec:
    seed: int
    index: int
    texture_seed: int
    sex: str
    age: int
    view: str  # "PA" | "AP"
    with_lateral: bool
    aspect: float  # columns / rows of the frontal image
    anatomy: Anatomy
    ctr: float  # cardiothoracic ratio
    cardiomegaly: str | None
    effusion: Sided | None
    pneumothorax: Sided | None
    consolidation: Sided | None
    devices: tuple[str, ...]

    def state(self, finding: str) -> str | None:
        """present / uncertain / None for each name in SYNTH_FINDINGS."""
        if finding == "Cardiomegaly":
            return self.cardiomegaly
        if finding == "Pleural Effusion":
            return self.effusion.state if self.effusion else None
        if finding == "Pneumothorax":
            return self.pneumothorax.state if self.pneumothorax else None
        if finding in ("Consolidation", "Lung Opacity"):
            return self.consolidation.state if self.consolidation else None
        if finding == "Support Devices":
            return PRESENT if self.devices else None
        raise KeyError(finding)


def study_rng(seed: int, index: int) -> np.random.Generator:
    """One independent stream per study: any study can be regenerated alone."""
    return np.random.default_rng([int(seed), int(index)])


def draw_study(seed: int, index: int, prevalence: float = 0.35,
               uncertain_share: float = 0.12) -> StudySpec:
    rng = study_rng(seed, index)
    anatomy = _draw_anatomy(rng)
    cardio = _draw_state(rng, prevalence, uncertain_share)
    if cardio == PRESENT:
        ctr = float(rng.uniform(0.58, 0.70))
    elif cardio == UNCERTAIN:
        ctr = float(rng.uniform(0.52, 0.55))
    else:
        ctr = float(rng.uniform(0.36, 0.47))
    return StudySpec(
        seed=int(seed),
        index=int(index),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        sex=str(rng.choice(["F", "M"])),
        age=int(rng.integers(18, 95)),
        view=str(rng.choice(["PA", "AP"], p=[0.6, 0.4])),
        with_lateral=bool(rng.random() < 0.3),
        aspect=float(rng.choice([0.82, 0.9, 1.0])),
        anatomy=anatomy,
        ctr=ctr,
        cardiomegaly=cardio,
        effusion=_draw_effusion(rng, prevalence, uncertain_share),
        pneumothorax=_draw_pneumothorax(rng, prevalence, uncertain_share),
        consolidation=_draw_consolidation(rng, prevalence, uncertain_share),
        devices=_draw_devices(rng, prevalence),
    )


def _draw_state(rng: np.random.Generator, prevalence: float, uncertain_share: float) -> str | None:
    if rng.random() >= prevalence:
        return None
    return UNCERTAIN if rng.random() < uncertain_share else PRESENT


def _draw_anatomy(rng: np.random.Generator) -> Anatomy:
    scale = float(rng.uniform(0.88, 1.06))
    return Anatomy(
        shift_x=float(rng.uniform(-0.035, 0.035)),
        shift_y=float(rng.uniform(-0.03, 0.03)),
        rotation_deg=float(rng.uniform(-3.0, 3.0)),
        scale=scale,
        apex_y=float(rng.uniform(0.12, 0.17)),
        base_y=float(rng.uniform(0.74, 0.82)),
        lung_halfwidth=float(rng.uniform(0.31, 0.36)) * scale,
        mediastinum_halfwidth=float(rng.uniform(0.05, 0.065)) * scale,
        dome_height=float(rng.uniform(0.045, 0.08)),
        lung_density=float(rng.uniform(0.14, 0.22)),
        soft_density=float(rng.uniform(0.48, 0.58)),
        bone_gain=float(rng.uniform(0.7, 1.3)),
        heart_height=float(rng.uniform(0.2, 0.25)),
        gamma=float(rng.uniform(0.8, 1.25)),
        noise=float(rng.uniform(0.008, 0.02)),
        blur=float(rng.uniform(0.8, 1.6)),
        heel=float(rng.uniform(-0.06, 0.06)),
        gastric_bubble=bool(rng.random() < 0.6),
    )


def _side(rng: np.random.Generator, bilateral_p: float) -> str:
    if rng.random() < bilateral_p:
        return "bilateral"
    return str(rng.choice(["right", "left"]))


def _draw_effusion(rng: np.random.Generator, prevalence: float, share: float) -> Sided | None:
    state = _draw_state(rng, prevalence, share)
    if state is None:
        return None
    side = _side(rng, 0.3)
    extent = rng.uniform(0.2, 0.45) if state == PRESENT else rng.uniform(0.06, 0.09)
    return Sided(state, side, float(extent))


def _draw_pneumothorax(rng: np.random.Generator, prevalence: float, share: float) -> Sided | None:
    state = _draw_state(rng, prevalence, share)
    if state is None:
        return None
    side = _side(rng, 0.0)
    # extent = the fraction of the lung's size that remains after collapse toward the hilum
    extent = rng.uniform(0.4, 0.68) if state == PRESENT else rng.uniform(0.85, 0.9)
    return Sided(state, side, float(extent))


def _draw_consolidation(rng: np.random.Generator, prevalence: float, share: float) -> Sided | None:
    state = _draw_state(rng, prevalence, share)
    if state is None:
        return None
    side = _side(rng, 0.12)
    lobes = ["upper", "lower", "middle"] if side == "right" else ["upper", "lower"]
    lobe = str(rng.choice(lobes))
    extent = rng.uniform(0.75, 0.95) if state == PRESENT else rng.uniform(0.25, 0.35)
    return Sided(state, side, float(extent), lobe)


def _draw_devices(rng: np.random.Generator, prevalence: float) -> tuple[str, ...]:
    if rng.random() >= prevalence:
        return ()
    count = int(rng.integers(1, 4))
    kinds = rng.choice(DEVICE_KINDS, size=count, replace=False, p=[0.25, 0.2, 0.25, 0.15, 0.15])
    return tuple(sorted(str(k) for k in kinds))
