"""Does the removal MASK leak through the perturbed image? ROAD's check (pipeline layer).

Rong, Leemann, Borisov, Kasneci and Kasneci (2022), "A Consistent and
Efficient Evaluation Strategy for Attribution Methods" (ICML): when removed
pixels become a fixed value, which pixels were removed is visible in the
perturbed image, so a model's drop in confidence can come from the SHAPE of
the removed set (class information leaking through the mask) rather than
from the evidence removed. Their check: train a small network to recover the
removal mask from the perturbed image. With a constant fill that is trivial;
the noisy linear imputation (:class:`xbench.perturbation.Road`) is meant to
make it hard.

:func:`mask_leakage` runs that check on arrays and built perturbations, the
same way for every perturbation so that the numbers are comparable:

1. Masks: for each image, a random set of whole regions of the engine's
   region grid (``region_size``) is removed; the fraction of regions is drawn
   uniformly from ``fractions`` (at least one region, never all), from a
   generator seeded by (seed, image id). The same masks serve every
   perturbation.
2. Perturbed images, built by the engine's own compiled step
   (:func:`xbench.perturbation.engine.device_step` over an identity model):
   pixel-wise perturbations give ``where(removed, g(x), x)`` with
   ``g = perturbation(x, image_rng(seed, id))``; mask-dependent ones (ROAD)
   ``perturbation.fill(x, removed, perturbation.draws(x, image_rng(seed, id)))``,
   batched on the device.
3. Split BY IMAGE into a training and a held-out part (seeded; the same
   split for every perturbation).
4. A small fully-convolutional network (``depth`` 3x3 ReLU convolutions of
   ``width`` channels, then a 1x1 sigmoid: a receptive field of
   2 * depth + 1 pixels) is trained from the same seeded initial weights, in
   the same seeded batch order, for the same number of epochs, to predict the
   per-pixel mask (binary cross-entropy). It sees perturbed images only.
5. On the held-out images:

   - ``mask_auc``: the ROC AUC of the predicted mask against the true one,
     all held-out pixels pooled;
   - ``mask_auc_per_image`` with ``mask_auc_ci``: the per-image AUC averaged
     over held-out images, with a percentile bootstrap 95% CI resampling
     IMAGES (:func:`xbench.metrics.bootstrap.bootstrap_ci`);
   - ``image_auc`` with ``image_auc_ci``: "perturbed or original?" scored by
     the SAME network's mean predicted mask over the image, the held-out
     perturbed images the positives and the same images unperturbed the
     negatives (no second classifier: the mask net's output is the score);
     the CI resamples held-out images, each bringing its pair.

0.5 is chance for every AUC: the mask cannot be read off the image (by this
network, with this budget). A high AUC is evidence of leakage; a low one is
only evidence that this small net did not find the mask.

Measured on phantoms (``xbench-bench --leakage``: 128 phantoms at 64 px,
8-px regions, 50 epochs, TensorFlow on a 2-core CPU; pooled mask AUC, seeds
0/1/2): constant 1.000/1.000/1.000, gaussian 0.998/0.997/0.998, road
0.894/0.930/0.938, identity (nothing removed, the floor) 0.508/0.516/0.507;
image AUC 0.99-1.00 for road, 1.000 for constant and gaussian. So on
phantoms ROAD's mask is NOT hidden: road leaks less than a black fill but
far above chance, and more training finds more. Why, measured without any
network on 64 of those phantoms (per-pixel AUC of a hand-made 3x3 feature
against the mask), before ROAD's noise was made grey for grey images:

- the images are grey repeated to 3 channels and ROAD's code draws its
  noise per channel, so |R - G| separated removed pixels (0.996, any noise
  > 0). Fixed: :meth:`xbench.perturbation.Road.draws` now shares one field
  across equal channels (seed 0's road AUC went from 0.913 to 0.894);
- the phantoms are uint8 and the fill is not: distance to the nearest 1/255
  level separates them (0.998; true of every fill that leaves the grid,
  gaussian's too). Left as is: rounding the fill would change ROAD's
  definition for every user to hide one cue from this check;
- roughness: the noiseless fill is too smooth (low |Laplacian|: 0.924); at
  ROAD's noise 0.01 the mean |Laplacian| matches (0.50), at 0.02 it is too
  rough (0.74). The noise level does not rescue the check: road's mask AUC
  with noise 0 / 0.005 / 0.01 / 0.02 / 0.05 was 0.883 / 0.851 / 0.913 /
  0.924 / 0.997 (seed 0, 50 epochs, per-channel noise).

With the first two cues removed (originals dithered off the uint8 grid,
noise shared across channels) the net still reached 0.84 (40 epochs) and
0.95 (100 epochs): white noise on a harmonic fill does not look like the
phantoms' spatially correlated noise and edges to a 3-layer net.

AUCs are the exact Mann-Whitney statistic with ties averaged
(:func:`xbench.metrics.localisation.lesion_auroc`, reused through
:func:`roc_auc`). Seeded: the same call on the same machine gives the same
numbers.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from xbench.data.pixels import to_unit_float
from xbench.metrics.bootstrap import bootstrap_ci, enough_units
from xbench.metrics.localisation import lesion_auroc
from xbench.perturbation.engine import device_step
from xbench.perturbation.perturbations import Perturbation, image_rng
from xbench.perturbation.regions import grid_shape, region_index_map


def roc_auc(scores, labels) -> float:
    """Exact ROC AUC of ``scores`` as a classifier of boolean ``labels`` (any shapes, flattened).

    P(score_pos > score_neg) + 1/2 P(tie), the Mann-Whitney U / (n1 n0) with
    average ranks for ties; NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) must have the same number of entries")
    return float(lesion_auroc(s[None, None, :], y[None, None, :])[0])


def paired_auc_ci(pos: np.ndarray, neg: np.ndarray, *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``roc_auc(pos vs neg)`` where pos[i], neg[i] come from the same image: images are resampled, each bringing both;
    NaN below :data:`xbench.metrics.bootstrap.MIN_UNITS` images."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    n = len(pos)
    if not enough_units(n):  # too few images for a CI (xbench.metrics.bootstrap.MIN_UNITS)
        return float("nan"), float("nan")
    idx = np.random.default_rng([seed, 0xA1C]).integers(0, n, size=(n_resamples, n))
    scores = np.concatenate([pos[idx], neg[idx]], axis=1)[:, None, :]  # (R, 1, 2n)
    labels = np.broadcast_to(np.r_[np.ones(n, bool), np.zeros(n, bool)], scores.shape)
    a = (1 - level) / 2
    lo, hi = np.quantile(lesion_auroc(scores, labels), [a, 1 - a])
    return float(lo), float(hi)


@dataclass
class LeakageResult:
    """One perturbation's leakage figures (see the module docstring)."""

    perturbation: dict
    mask_auc: float
    mask_auc_per_image: float
    mask_auc_ci: tuple[float, float]
    image_auc: float
    image_auc_ci: tuple[float, float]
    n_train: int
    n_test: int
    removed_fraction: float  # mean share of pixels removed, held-out images
    train_loss: float  # mean loss of the last epoch
    test_loss: float  # held-out binary cross-entropy
    train_seconds: float
    fill_seconds: float
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["mask_auc_ci"], d["image_auc_ci"] = list(self.mask_auc_ci), list(self.image_auc_ci)
        return d


def removal_masks(n: int, height: int, width: int, region_size: int, *, seed: int, fractions=(0.1, 0.5), image_ids: Sequence[int] | None = None) -> np.ndarray:
    """(N, H, W) bool: for image i, a random set of whole grid regions, k = round(f L) of them with f ~ U(fractions), 1 <= k <= L - 1.

    Drawn from ``default_rng([seed, image_ids[i], 0x1EA])``: independent of N,
    of the other images and of the perturbation draws.
    """
    lo, hi = map(float, fractions)
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"fractions: need 0 <= low <= high <= 1, got {fractions}")
    rows, cols = grid_shape(height, width, region_size)
    L = rows * cols
    if L < 2:
        raise ValueError(f"region_size {region_size} leaves {L} region on a {height}x{width} image; a mask needs at least 2")
    idx = region_index_map(height, width, region_size)
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    out = np.zeros((n, height, width), bool)
    for i in range(n):
        rng = np.random.default_rng([int(seed), int(ids[i]), 0x1EA])
        k = int(np.clip(round(rng.uniform(lo, hi) * L), 1, L - 1))
        out[i] = np.isin(idx, rng.choice(L, size=k, replace=False))
    return out


@functools.lru_cache(maxsize=8)
def _identity_model(height: int, width: int):
    """An identity Keras model, so the engine's compiled step (cached on it) builds perturbed images and nothing else; one per size and process."""
    import keras

    inp = keras.Input((height, width, 3))
    return keras.Model(inp, keras.layers.Identity()(inp), name="identity")


def perturb_with_masks(images, removed, perturbation: Perturbation, *, seed: int, image_ids: Sequence[int] | None = None,
                       batch_size: int = 32) -> np.ndarray:
    """(N, H, W, 3) float32: each image with its ``removed`` pixels perturbed, built as the engine builds x(k).

    The engine's compiled step (over an identity model) forms the images on
    the device: rank 0 where removed and 1 elsewhere at step k = 1, so
    ``where(removed, g(x), x)`` for pixel-wise perturbations and
    ``perturbation.fill(x, removed, draws)`` for mask-dependent ones, with
    ``g`` / ``draws`` from ``image_rng(seed, id)``.
    """
    n, h, w = removed.shape
    if len(images) != n or tuple(images.shape[1:3]) != (h, w):
        raise ValueError(f"images {tuple(images.shape)} and masks {removed.shape} disagree")
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    model = _identity_model(h, w)
    step = device_step(model, perturbation)
    B = max(1, min(int(batch_size), n))
    out = np.empty((n, h, w, 3), np.float32)
    X = np.zeros((B, h, w, 3), np.float32)
    R = np.zeros_like(X)
    RK = np.ones((B, h, w), np.int32)
    idx, k = np.arange(B, dtype=np.int32), np.ones(B, np.int32)
    for s in range(0, n, B):
        e = min(n, s + B)
        for j, i in enumerate(range(s, e)):
            x = to_unit_float(images[i])
            rng = image_rng(seed, ids[i])
            X[j] = x
            R[j] = perturbation.draws(x, rng) if perturbation.mask_dependent else perturbation(x, rng)
            RK[j] = np.where(removed[i], 0, 1)
        res = step(X, R, RK, idx, k)  # always B pairs: one compiled shape
        if perturbation.mask_dependent:
            res = res[0]  # the images; the solver residuals are the engine's concern
        out[s:e] = np.asarray(res if not hasattr(res, "numpy") else res.numpy())[: e - s]
    return out


def _seed(*parts) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31 - 1))


def mask_net(height: int, width: int, *, seed: int, width_channels: int = 16, depth: int = 3):
    """The mask predictor: ``depth`` 3x3 ReLU convolutions, a 1x1 sigmoid; (B, H, W, 3) -> (B, H, W, 1). Weights seeded per layer."""
    import keras

    inp = keras.Input((height, width, 3))
    x = inp
    for i in range(depth):
        x = keras.layers.Conv2D(width_channels, 3, padding="same", activation="relu",
                                kernel_initializer=keras.initializers.HeNormal(seed=_seed(seed, 0x4E7, i)))(x)
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(seed=_seed(seed, 0x4E7, depth)))(x)
    return keras.Model(inp, out, name="mask_net")


def _predict(net, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, H, W) float64 predicted mask; direct calls (no ``predict`` function traced per new net)."""
    return np.concatenate([np.asarray(net(x[s : s + batch_size], training=False))[..., 0] for s in range(0, len(x), batch_size)]).astype(np.float64)


def mask_leakage(
    images,
    perturbations: dict[str, Perturbation],
    *,
    region_size: int,
    seed: int = 0,
    fractions: tuple[float, float] = (0.1, 0.5),
    epochs: int = 15,
    batch_size: int = 8,
    learning_rate: float = 3e-3,
    width: int = 16,
    depth: int = 3,
    test_fraction: float = 0.5,
    image_ids: Sequence[int] | None = None,
    n_resamples: int = 2000,
) -> dict[str, LeakageResult]:
    """ROAD's leakage check for each perturbation (the module docstring says exactly what is done).

    Args:
        images: (N, H, W, 3) uint8 or float in [0, 1].
        perturbations: name -> built perturbation.
        region_size: side of the engine's square regions (the removal unit).
        seed: fixes masks, perturbation draws (with the image ids), the split,
            the network's initial weights and its batch order.
        fractions: (low, high) of the uniform share of regions removed.
        epochs, batch_size, learning_rate, width, depth: the network and its
            training budget, the same for every perturbation.
        test_fraction: the share of IMAGES held out.
        image_ids: (N,) stable ids for the per-image draws (default arange(N)).
        n_resamples: bootstrap resamples for the CIs.

    Returns:
        name -> :class:`LeakageResult`, in the order of ``perturbations``.
    """

    images = np.asarray(images) if not hasattr(images, "shape") else images
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {tuple(images.shape)}")
    n, h, w = images.shape[:3]
    n_test = int(round(n * test_fraction))
    if n_test < 2 or n - n_test < 1:
        raise ValueError(f"{n} images: need at least 1 to train on and 2 held out (test_fraction {test_fraction})")
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    removed = removal_masks(n, h, w, region_size, seed=seed, fractions=fractions, image_ids=ids)
    perm = np.random.default_rng([int(seed), 0x5B1]).permutation(n)
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    originals = to_unit_float(images[test])
    y = removed[..., None].astype(np.float32)
    settings = {"region_size": region_size, "seed": seed, "fractions": list(fractions), "epochs": epochs, "batch_size": batch_size,
                "learning_rate": learning_rate, "width": width, "depth": depth, "test_fraction": test_fraction, "image_size": [h, w]}
    results = {}
    for name, pert in perturbations.items():
        t0 = time.perf_counter()
        xp = perturb_with_masks(images, removed, pert, seed=seed, image_ids=ids)
        fill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        net, losses = _train_mask_net(xp, y, train, seed=seed, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                      width=width, depth=depth)
        train_s = time.perf_counter() - t0
        results[name] = _scored(net, xp[test], originals, removed[test], n_resamples, seed, perturbation=pert.describe(), n_train=len(train),
                                n_test=n_test, train_loss=float(np.mean(losses)) if losses else float("nan"), train_seconds=train_s,
                                fill_seconds=fill_s, settings=settings)
    return results


def _train_mask_net(xp, y, train, *, seed: int, epochs: int, batch_size: int, learning_rate: float, width: int, depth: int):
    """The mask network trained on the ``train`` rows of (perturbed images, removal masks); returns it and the last epoch's batch losses."""
    import keras

    h, w = xp.shape[1:3]
    net = mask_net(h, w, seed=seed, width_channels=width, depth=depth)
    net.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    order_rng = np.random.default_rng([int(seed), 0x7A1])  # the same batch order for every perturbation
    losses = []
    for _ in range(epochs):
        order = train[order_rng.permutation(len(train))]
        losses = [float(np.asarray(net.train_on_batch(xp[order[s : s + batch_size]], y[order[s : s + batch_size]])))
                  for s in range(0, len(order), batch_size)]
    return net, losses


def _scored(net, perturbed, originals, truth, n_resamples: int, seed: int, **facts) -> LeakageResult:
    """How well ``net`` reads the removal masks ``truth`` off the held-out ``perturbed`` images (pixel AUC), and tells them from ``originals`` (image AUC)."""
    pm = _predict(net, perturbed)  # (n_test, H, W)
    po = _predict(net, originals)
    per_image = lesion_auroc(pm, truth)
    eps = 1e-7
    pc = np.clip(pm, eps, 1 - eps)
    test_loss = float(-np.mean(np.where(truth, np.log(pc), np.log(1 - pc))))
    pos, neg = pm.mean(axis=(1, 2)), po.mean(axis=(1, 2))
    image_auc = roc_auc(np.r_[pos, neg], np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    return LeakageResult(
        mask_auc=roc_auc(pm, truth),
        mask_auc_per_image=float(np.mean(per_image)),
        mask_auc_ci=bootstrap_ci(per_image, n_resamples=n_resamples, seed=seed),
        image_auc=image_auc,
        image_auc_ci=paired_auc_ci(pos, neg, n_resamples=n_resamples, seed=seed),
        removed_fraction=float(truth.mean()), test_loss=test_loss, **facts,
    )
