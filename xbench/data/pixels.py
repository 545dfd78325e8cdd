"""The one conversion from stored pixels to model input.

Images are stored and cached as uint8 (N, H, W, 3); every model, explainer
and perturbation in xbench sees floats in [0, 1] (DESIGN.md, "The method,
exactly"). This is where the one becomes the other.
"""

from __future__ import annotations

import numpy as np

#: Multiplying by the float32 reciprocal (not dividing) is what every cached
#: figure was computed with; the two can differ in the last bit.
_SCALE = np.float32(1 / 255)


def to_unit_float(images) -> np.ndarray:
    """uint8 pixels (any shape) -> float32 in [0, 1]; float input is returned as float32 unchanged.

    Accepts arrays, memmaps and row views (anything ``np.asarray`` takes).
    """
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x.astype(np.float32) * _SCALE
    return x.astype(np.float32, copy=False)
