"""Balanced downsampling and stratified, group-aware train/val/test splits.

Pure functions of (labels, groups, fractions, seed): the same inputs give the
same split on every machine.
"""

from __future__ import annotations

import math

import numpy as np

from xbench.core.names import SPLITS  # noqa: F401  (re-exported)


def balanced_subset(labels: np.ndarray, seed: int, per_class: int | None = None) -> np.ndarray:
    """Indices keeping ``per_class`` images of every class (default: the smallest class size).

    Returns sorted int64 indices. The paper keeps 1,345 of each of the four
    classes (5,380 images).
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n = int(counts.min()) if per_class is None else int(min(per_class, counts.min()))
    rng = np.random.default_rng([seed, 0xBA1])
    keep = [np.sort(rng.permutation(np.flatnonzero(labels == c))[:n]) for c in classes]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def capped_subset(labels: np.ndarray, seed: int, max_per_class: int) -> np.ndarray:
    """Indices keeping at most ``max_per_class`` images of every class (sorted int64)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 0xCA9])
    keep = [np.sort(rng.permutation(np.flatnonzero(labels == c))[:max_per_class]) for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def _counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    # floor for train and val, the remainder to test: 1,345 images at
    # 0.8/0.1/0.1 give 1,076/134/135, the paper's 4,304/536/540 over 4 classes.
    n_train = math.floor(fractions[0] * n + 1e-9)
    n_val = math.floor(fractions[1] * n + 1e-9)
    return n_train, n_val, n - n_train - n_val


def stratified_split(
    labels: np.ndarray,
    fractions: tuple[float, float, float],
    seed: int,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Assign every image to "train", "val" or "test", class by class.

    Args:
        labels: (N,) int class labels.
        fractions: (train, val, test), non-negative, summing to 1.
        seed: split seed.
        groups: (N,) group ids (patients). All images of a group go to one
            split; a group is stratified by its most frequent label. None
            makes every image its own group.

    Returns:
        (N,) array of str split names.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if groups is None:
        groups = np.arange(n).astype(str)
    groups = np.asarray(groups).astype(str)
    uniq, inverse = np.unique(groups, return_inverse=True)
    group_label = np.array([np.bincount(labels[inverse == g]).argmax() for g in range(len(uniq))])
    group_size = np.bincount(inverse, minlength=len(uniq))
    rng = np.random.default_rng([seed, 0x5B1])
    group_split = np.empty(len(uniq), dtype=object)
    for c in np.unique(group_label):
        members = rng.permutation(np.flatnonzero(group_label == c))
        n_train, n_val, _ = _counts(int(group_size[members].sum()), fractions)
        # Fill train, then val, by whole groups in shuffled order.
        filled = np.cumsum(group_size[members]) - group_size[members]
        group_split[members] = np.where(filled < n_train, "train", np.where(filled < n_train + n_val, "val", "test"))
    out = group_split[inverse].astype(str)
    return out


def carve_validation(labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Split a training pool into "train"/"val" by group, stratified; returns (N,) str."""
    out = stratified_split(labels, (1.0 - val_fraction, val_fraction, 0.0), seed, groups)
    # Rounding leaves at most a group or so for "test"; it belongs to val here.
    return np.where(out == "test", "val", out)


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of ``n`` images drawn without replacement, class shares kept (largest remainder; every class keeps >= 1 where n allows)."""
    labels = np.asarray(labels)
    if not 1 <= n <= len(labels):
        raise ValueError(f"sample size must lie in [1, {len(labels)}], got {n}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    take = np.floor(exact).astype(np.int64)
    if n >= len(classes):
        take = np.maximum(take, 1)
    while take.sum() > n:  # the minimum of 1 overshot: trim the largest shares
        take[np.argmax(take - exact)] -= 1
    for i in np.argsort(-(exact - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    rng = np.random.default_rng([seed, 0x7E57])
    picked = [rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked)).astype(np.int64)
