"""What every data source checks the same way: image fields, split fractions, a required root."""

from __future__ import annotations

import math


def check_images(src) -> None:
    """The fields every source has: image size, corrupt-file policy, per-class cap."""
    if src.image_size < 1:
        raise ValueError(f"image_size: must be a positive number of pixels, got {src.image_size}")
    if src.on_corrupt not in ("skip", "error"):
        raise ValueError(f"on_corrupt: must be 'skip' or 'error', got {src.on_corrupt!r}")
    if src.max_per_class is not None and src.max_per_class < 1:
        raise ValueError(f"max_per_class: must be >= 1, got {src.max_per_class}")


def check_fractions(fractions) -> None:
    fr = [float(f) for f in fractions]
    if len(fr) != 3:
        raise ValueError(f"fractions: give three fractions [train, val, test], got {fr}")
    if not all(f >= 0 for f in fr):
        raise ValueError(f"fractions: fractions must be non-negative, got {fr}")
    if not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions: fractions must sum to 1, got {fr} (sum {sum(fr):g})")
    if not all(f > 0 for f in fr):
        raise ValueError(f"fractions: train, val and test all need images, got {fr}")


def require_root(root, example: str, other: str) -> None:
    if root in (None, ""):
        raise ValueError(f"root: not set; point it at the dataset folder (data.root={example}) or use {other}")
