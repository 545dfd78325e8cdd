"""The checks of the explainers' parameters, Keras-free: one owner for the config classes (:mod:`xbench.explain.explainers`) and the kernels.

Each raises ``ValueError`` naming the field, so a config key can be named
by :mod:`xbench.apps.config` and a Python caller reads the argument's name.
"""

from __future__ import annotations

from xbench.core.names import ENGINE_METHODS, LRP_COMPOSITES, REDUCTIONS


def check_batch_size(batch_size: int | None) -> None:
    """Items per pass; None: chosen from a memory budget (the mask-program explainers)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")


def check_reduce(reduce: str) -> None:
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce: must be one of {list(REDUCTIONS)}, got {reduce!r}")


def check_baseline(baseline: float) -> None:
    """A constant reference image's grey level (Integrated Gradients, DeepLIFT)."""
    if not 0.0 <= baseline <= 1.0:
        raise ValueError(f"baseline: must be a grey level in [0, 1] (0 = black), got {baseline}")


def check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")


def check_lrp(composite: str, epsilon: float, gamma: float, alpha: float, beta: float) -> None:
    """LRP's composite and rule parameters (alpha - beta = 1 keeps relevance conserved)."""
    if composite not in LRP_COMPOSITES:
        raise ValueError(f"composite: must be one of {list(LRP_COMPOSITES)}, got {composite!r}")
    if epsilon < 0 or gamma < 0:
        raise ValueError(f"epsilon, gamma: must be >= 0, got {epsilon}, {gamma}")
    if abs(alpha - beta - 1.0) > 1e-9 or beta < 0:
        raise ValueError(f"alpha, beta: need alpha - beta = 1 and beta >= 0 (relevance is conserved), got {alpha}, {beta}")


def check_occlusion(patch_size: int, stride: int, baseline: float, method: str = "auto") -> None:
    """Occlusion's window (the image side bounds it when the images arrive), grey level and engine method."""
    if method not in ENGINE_METHODS:
        raise ValueError(f"method: must be one of {list(ENGINE_METHODS)}, got {method!r}")
    if method == "incremental" and stride != patch_size:
        raise ValueError(f"method: incremental occlusion needs stride = patch_size (windows that tile the image), got stride {stride}, patch {patch_size}")
    if patch_size < 1:
        raise ValueError(f"patch_size: must be >= 1, got {patch_size}")
    if not 1 <= stride <= patch_size:
        raise ValueError(f"stride: must lie in [1, patch_size = {patch_size}] (a larger step leaves pixels no window covers), got {stride}")
    check_baseline(baseline)


def check_rise(masks: int, grid: int, keep_prob: float) -> None:
    """RISE's mask count N, grid side s and keep probability p."""
    if masks < 1:
        raise ValueError(f"masks: must be >= 1, got {masks}")
    if grid < 1:
        raise ValueError(f"grid: must be >= 1, got {grid}")
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob: must lie in (0, 1], got {keep_prob}")


def check_max_n(max_n: int | None) -> None:
    """Faster Score-CAM's channel count (None: every channel)."""
    if max_n is not None and max_n < 1:
        raise ValueError(f"max_n: must be >= 1 (or null for every channel), got {max_n}")
