"""Synthetic chest phantoms: pure array functions, no disk.

A phantom is a chest-like grayscale image with a known lung mask and a known
lesion mask, so that the benchmark can test itself: a good explainer should
put its mass on the lesion, inside the lungs. Anatomy (body outline, lungs,
mediastinum and heart shadow, spine, ribs, noise) varies per image; the class
pattern sits inside the lungs only:

- ``COVID``: bilateral, peripheral, lower-zone ground-glass blobs;
- ``Lung_Opacity``: one focal dense consolidation in one lung;
- ``Viral Pneumonia``: a diffuse reticular (net-like) texture in both lungs;
- ``Normal``: nothing.

An optional shortcut marker (a bright square outside the lungs, like a
radiographer's side marker) can be burnt into a fraction of one class's
images, so a model can be made to cheat on purpose.

Everything is a deterministic function of ``(seed, class, index)``.

A multi-label phantom (:func:`make_multilabel_phantom`) carries any subset of
the three disease patterns at once, each with its own lesion mask; both kinds
share the anatomy, pattern and acquisition helpers below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: Class folder names of the COVID-19 Radiography Database, in label order.
RADIOGRAPHY_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


@dataclass(frozen=True)
class Phantom:
    """One synthetic radiograph.

    Attributes:
        image: (S, S) uint8, the radiograph.
        lungs: (S, S) bool, the lung fields.
        lesion: (S, S) bool, where the class pattern is (empty for Normal).
        marker: (S, S) bool, where the shortcut marker is (usually empty).
    """

    image: np.ndarray
    lungs: np.ndarray
    lesion: np.ndarray
    marker: np.ndarray


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _smooth(field: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(field, sigma, mode="reflect")


def lesion_amplitude(difficulty: float) -> float:
    """Peak lesion contrast (in [0, 1] image units) for a difficulty in [0, 1].

    0 gives clearly visible lesions (0.30), 1 barely visible ones (0.05).
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must lie in [0, 1], got {difficulty}")
    return 0.30 - 0.25 * difficulty


#: Where a finding's smoothed pattern counts as lesion (pattern units, before the contrast ``amp``).
LESION_LEVEL = 0.25


def make_phantom(
    label: str,
    index: int,
    *,
    seed: int = 0,
    size: int = 299,
    difficulty: float = 0.3,
    marker: bool = False,
) -> Phantom:
    """Draw one phantom of class ``label``.

    One random stream, ``default_rng([seed, class index, index])``, feeds the
    anatomy, the class pattern and the acquisition in that order (cached
    databases depend on it: the output is bit-identical to generator 4's).

    Args:
        label: one of :data:`RADIOGRAPHY_CLASSES`.
        index: the image's number within its class (any int >= 0).
        seed: the database seed.
        size: side length S in pixels.
        difficulty: lesion contrast knob in [0, 1] (see :func:`lesion_amplitude`).
        marker: burn the shortcut marker into this image.
    """
    if label not in RADIOGRAPHY_CLASSES:
        raise ValueError(f"unknown phantom class {label!r}; expected one of {RADIOGRAPHY_CLASSES}")
    rng = np.random.default_rng([seed, RADIOGRAPHY_CLASSES.index(label), index])
    chest = _anatomy(rng, size)
    amp = lesion_amplitude(difficulty)
    pattern = _pattern(rng, label, chest)
    img = chest.img + amp * pattern
    lesion = pattern > LESION_LEVEL

    # Shortcut marker: a bright square above the shoulder, outside the lungs.
    marker_mask = np.zeros((size, size), bool)
    if marker:
        s = float(size)
        m = max(2, int(round(s * 0.06)))
        y0 = int(s * 0.06)
        x0 = int(s * 0.08)
        marker_mask[y0 : y0 + m, x0 : x0 + m] = True
        img = np.where(marker_mask, 0.97, img)

    image = _acquire(rng, img)
    return Phantom(image=image, lungs=chest.lungs, lesion=lesion, marker=marker_mask)


@dataclass(frozen=True)
class _Chest:
    """The anatomy a pattern is drawn into: (S, S) float image and bool lungs, lung ellipses, grids."""

    img: np.ndarray
    lungs: np.ndarray
    lung_geo: tuple  # per lung (cy, cx, ry, rx, side), side -1 = image left
    yy: np.ndarray
    xx: np.ndarray
    size: int


def _anatomy(rng: np.random.Generator, size: int) -> _Chest:
    """Body, lungs, mediastinum, heart, spine and ribs; a fixed number of draws from ``rng``."""
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    # Body: a bright-ish soft-tissue ellipse with shoulders cut by the frame.
    img = np.full((size, size), 0.04)
    bcx = s * (0.5 + rng.uniform(-0.03, 0.03))
    body = _ellipse(yy, xx, s * rng.uniform(0.55, 0.62), bcx, s * rng.uniform(0.55, 0.62), s * rng.uniform(0.40, 0.47))
    img = np.where(body < 1.0, rng.uniform(0.42, 0.52), img)

    # Lungs: two dark ellipses, the left one (image right) a little smaller.
    ly = s * rng.uniform(0.48, 0.54)
    lungs = np.zeros((size, size), bool)
    lung_geo = []
    for side in (-1, 1):
        cx = bcx + side * s * rng.uniform(0.17, 0.21)
        ry = s * rng.uniform(0.25, 0.30)
        rx = s * rng.uniform(0.10, 0.13) * (0.92 if side > 0 else 1.0)
        cy = ly + rng.uniform(-0.02, 0.02) * s
        lungs |= _ellipse(yy, xx, cy, cx, ry, rx) < 1.0
        lung_geo.append((cy, cx, ry, rx, side))
    lung_level = rng.uniform(0.14, 0.22)
    img = np.where(lungs, lung_level, img)

    # Mediastinum, heart shadow and spine overlap the inner lung edges.
    spine = np.abs(xx - bcx) < s * rng.uniform(0.035, 0.05)
    img = np.where(spine & (body < 1.0), img + 0.18, img)
    heart = _ellipse(yy, xx, ly + s * 0.12, bcx + s * 0.06, s * 0.13, s * rng.uniform(0.10, 0.13)) < 1.0
    img = np.where(heart, np.maximum(img, rng.uniform(0.50, 0.58)), img)
    lungs &= ~heart

    # Ribs: faint curved bands across the lung fields.
    period = s * rng.uniform(0.075, 0.09)
    phase = rng.uniform(0, 2 * np.pi)
    curve = yy + 0.0018 * (xx - bcx) ** 2 / (s / 299.0)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * curve / period + phase)
    img = img + 0.05 * (ribs > 0.8) * (body < 1.0)
    return _Chest(img=img, lungs=lungs, lung_geo=tuple(lung_geo), yy=yy, xx=xx, size=size)


def _pattern(rng: np.random.Generator, finding: str, chest: _Chest) -> np.ndarray:
    """(S, S) float >= 0, the finding's pattern in units of the lesion contrast, zero outside the lungs.

    ``Normal`` (or any name without a pattern) draws nothing and gives zeros;
    the lesion is where the result exceeds :data:`LESION_LEVEL`.
    """
    size, yy, xx = chest.size, chest.yy, chest.xx
    s = float(size)
    pattern = np.zeros((size, size))
    if finding == "COVID":
        for cy, cx, ry, rx, side in chest.lung_geo:
            for _ in range(rng.integers(2, 4)):
                py = cy + ry * rng.uniform(0.15, 0.65)  # lower zone
                px = cx + side * rx * rng.uniform(0.35, 0.75)  # peripheral
                sig = s * rng.uniform(0.035, 0.05)
                pattern += 0.8 * np.exp(-(((yy - py) ** 2 + (xx - px) ** 2) / (2 * sig**2)))
    elif finding == "Lung_Opacity":
        cy, cx, ry, rx, side = chest.lung_geo[rng.integers(0, 2)]
        py = cy + ry * rng.uniform(-0.5, 0.5)
        px = cx + rx * rng.uniform(-0.4, 0.4)
        sig = s * rng.uniform(0.06, 0.08)
        d = np.sqrt((yy - py) ** 2 + (xx - px) ** 2) / sig
        pattern = 2.0 / (1.0 + np.exp(3.0 * (d - 1.2)))  # dense, sharp-edged
    elif finding == "Viral Pneumonia":
        # Net-like texture: band-passed noise whose ridges form a mesh.
        noise = rng.standard_normal((size, size))
        band = _smooth(noise, s * 0.012) - _smooth(noise, s * 0.03)
        band /= band.std() + 1e-12
        pattern = 0.9 * np.clip(np.abs(band) - 0.3, 0, None)
    # Smooth first, then confine: the pattern must not bleed past the lung edge.
    return np.where(chest.lungs, _smooth(pattern, 1.0), 0.0)


def _acquire(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """(S, S) uint8 radiograph from the (S, S) float scene: exposure variation, quantum noise, blur."""
    from scipy.ndimage import zoom

    size = img.shape[0]
    # Soft low-frequency exposure variation plus quantum noise. Drawn on a
    # coarse grid and upsampled: the same smooth field as a wide Gaussian
    # blur at a fraction of its cost.
    coarse = _smooth(rng.standard_normal((12, 12)), 1.5)
    exposure = zoom(coarse, size / 12.0, order=3, mode="nearest")[:size, :size]
    exposure /= np.abs(exposure).max() + 1e-12
    img = img * (1.0 + 0.06 * exposure) * rng.uniform(0.9, 1.1)
    img = img + rng.normal(0.0, 0.02, (size, size))
    img = _smooth(img, 0.7)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


#: The findings a multi-label phantom may carry (the disease patterns above), in label order.
MULTILABEL_FINDINGS = ("COVID", "Lung_Opacity", "Viral Pneumonia")
#: Seeds the multi-label streams apart from make_phantom's ([seed, class index, index], class index < 4).
_MULTILABEL_TAG = 0x3117


@dataclass(frozen=True)
class MultiLabelPhantom:
    """One synthetic radiograph carrying any subset of :data:`MULTILABEL_FINDINGS`.

    Attributes:
        image: (S, S) uint8, the radiograph.
        lungs: (S, S) bool, the lung fields.
        lesions: per finding asked for, in the order asked, (S, S) bool: where
            that finding's own pattern is (inside the lungs; findings may overlap).
    """

    image: np.ndarray
    lungs: np.ndarray
    lesions: dict[str, np.ndarray]


def make_multilabel_phantom(
    findings: Sequence[str],
    index: int,
    *,
    seed: int = 0,
    size: int = 299,
    difficulty: float = 0.3,
) -> MultiLabelPhantom:
    """Draw one phantom carrying every finding in ``findings`` at once (an empty tuple: a normal chest).

    Independent random streams: the anatomy and the acquisition noise come
    from ``default_rng([seed, tag, index])`` (a fixed number of draws, so
    they do not depend on the findings), finding k's pattern from
    ``default_rng([seed, tag, index, k])`` with k its position in
    :data:`MULTILABEL_FINDINGS`. An image's lesion for one finding is thus the
    same whichever other findings it carries; the patterns add up in the image.

    Args:
        findings: distinct names from :data:`MULTILABEL_FINDINGS`, any order.
        index: the image's number (any int >= 0).
        seed: the database seed.
        size: side length S in pixels.
        difficulty: lesion contrast knob in [0, 1] (see :func:`lesion_amplitude`).
    """
    findings = tuple(findings)
    unknown = [f for f in findings if f not in MULTILABEL_FINDINGS]
    if unknown:
        raise ValueError(f"unknown finding {unknown[0]!r}; expected names from {MULTILABEL_FINDINGS}")
    if len(set(findings)) != len(findings):
        raise ValueError(f"findings: each finding at most once, got {list(findings)}")
    amp = lesion_amplitude(difficulty)
    rng = np.random.default_rng([seed, _MULTILABEL_TAG, index])
    chest = _anatomy(rng, size)
    img = chest.img
    lesions = {}
    for k, finding in enumerate(MULTILABEL_FINDINGS):  # a fixed order: the image does not depend on the order asked
        if finding in findings:
            pattern = _pattern(np.random.default_rng([seed, _MULTILABEL_TAG, index, k]), finding, chest)
            img = img + amp * pattern
            lesions[finding] = pattern > LESION_LEVEL
    return MultiLabelPhantom(image=_acquire(rng, img), lungs=chest.lungs, lesions={f: lesions[f] for f in findings})


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a (S, S) bool mask to (size, size) bool."""
    s = mask.shape[0]
    idx = np.minimum((np.arange(size) + 0.5) * s / size, s - 1).astype(int)
    return mask[np.ix_(idx, idx)]
