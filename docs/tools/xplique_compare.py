"""xbench's Occlusion, RISE and MuFidelity against Xplique 2.0.2's on the same model and images: time, and values where the definitions agree.

    pip install --no-deps xplique==2.0.2 einops deprecated tensorflow-probability==0.25.0 tf_keras decorator cloudpickle dm-tree gast
    python docs/tools/xplique_compare.py [--size 64] [--n 4] [--backbone vgg16] [--patch 8] [--strides 8 4] [--masks 4000]

Xplique is not an xbench dependency (2.0.2 pins TensorFlow <= 2.20; with
``--no-deps`` it imports and runs on TensorFlow 2.21 / Keras 3). Times: one
warm-up call of each side first (tracing and compiling excluded), then the
best of 2 runs; "speed" is Xplique's time over xbench's. Printed: a Markdown
table. Both sides read the model's softmax probabilities (the classifier's
output) of xbench's predicted class (Xplique gets it one-hot).

How each "agreement" figure is made (the definitions differ; these are the
settings and rescalings under which they coincide):

- Occlusion: Xplique *sums* the probability drop over the windows covering a
  pixel, xbench *averages* it; Xplique's windows only sit at full positions,
  xbench's reach every edge. With (S - patch) divisible by the stride the two
  window grids coincide, so xbench's map times each pixel's window count must
  equal Xplique's map. Xplique's ``occlusion_value`` = xbench's ``baseline``.
- RISE: Xplique draws its own masks (``tf.random``, bilinear resize with
  clamped edges, ``tf.image.random_crop``) and divides by the per-pixel sum of
  masks; xbench draws per (seed, image id), resizes with mirrored edges and
  divides by N p. Patched for the comparison (and restored afterwards):
  ``Rise._get_masks`` returns mask indices 0..N-1 and ``Rise._apply_masks``
  looks those up in xbench's own upsampled masks of the image being explained
  (rebuilt on the host from ``RiseMasks.draws``; Xplique then runs one image at
  a time). Compared: Xplique's map x (sum of masks + Xplique's EPSILON) / (N p)
  against xbench's map. Also shown: with each library's own masks, the Pearson
  correlation of the two maps per image (they agree only in expectation), and
  as its yardstick that of xbench's maps with seeds 0 and 1 (with a few
  hundred masks the Monte Carlo noise dominates both).
- MuFidelity: patched ``MuFidelity._perturb_samples`` returns xbench's subsets
  (``MuFidelity.bits`` of the image, resized by the program's cell map; Xplique's
  mask is 1 where a pixel is kept) and the matching perturbed inputs; Xplique
  is run one image at a time (it returns the mean) and its scores compared
  with xbench's per image. Also checked: Xplique's own mask geometry
  (``tf.image.resize(..., "nearest")`` of the grid) against xbench's cell map
  on the same bits. Xplique turns an undefined rho into 0, xbench into NaN.
  Xplique subtracts f(x) - f(x_s) in float32, xbench in float64: where the
  softmax saturates on perturbed images (p = 1.0, or p < 1e-7 next to
  f(x) ~ 0.5, in float32) Xplique's drops tie where xbench's differ, and the
  rank correlations part by up to ~1e-3. The second figure recomputes the
  rho from xbench's probabilities with the subtraction in float32; it
  matches Xplique's to rounding, which accounts for the first.

The timed runs use the libraries unpatched, each with its own masks.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

PATCHES = """patches applied (only for the agreement figures, undone after each):
  xplique.attributions.Rise._get_masks   -> tf.range(nb_samples) (mask indices)
  xplique.attributions.Rise._apply_masks -> xbench's upsampled RISE masks of the current image, looked up by index
  xplique.metrics.MuFidelity._perturb_samples -> xbench's MuFidelity subsets of the current image (keep = 1 - removed)"""


def best_of(fn, reps: int = 2):
    """(best seconds of ``reps`` runs after one warm-up call, the last result)."""
    out = fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def window_counts(S: int, patch: int, stride: int) -> np.ndarray:
    """(S, S) number of xbench windows covering each pixel."""
    from xbench.perturbation.programs import window_starts

    starts = window_starts(S, patch, stride)
    c = np.zeros(S)
    for s in starts:
        c[s : s + patch] += 1
    return np.outer(c, c)


def rise_masks_host(program, i: int, S: int, chunk: int = 250) -> np.ndarray:
    """(M, S, S) float32: image ``i``'s RISE masks as xbench's device builds them (grid upsampled by Uh, Uw, cut at the shift)."""
    grids, shifts = program.draws(i)
    Uh, Uw = program.Uh.astype(np.float64), program.Uw.astype(np.float64)
    out = np.empty((len(grids), S, S), np.float32)
    ar = np.arange(S)
    for a in range(0, len(grids), chunk):
        g = grids[a : a + chunk].astype(np.float64)
        up = np.einsum("hs,mst,wt->mhw", Uh, g, Uw)
        rows = shifts[a : a + chunk, 0, None] + ar  # (m, S)
        cols = shifts[a : a + chunk, 1, None] + ar
        out[a : a + chunk] = up[np.arange(len(g))[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out


def fmt(v: float) -> str:
    return f"{v:.2g}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--strides", type=int, nargs="+", default=[8, 4])
    p.add_argument("--baseline", type=float, default=0.5, help="occlusion grey level (xbench's default)")
    p.add_argument("--masks", type=int, default=4000)
    p.add_argument("--grid", type=int, default=7)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--mu-samples", type=int, default=200)
    p.add_argument("--xplique-batch", type=int, default=64, help="Xplique's batch_size (xbench sizes its own batches from its memory budget)")
    a = p.parse_args()

    import tensorflow as tf
    from xplique.attributions import Occlusion, Rise
    from xplique.metrics import MuFidelity as XMuFidelity

    from xbench.explain.masking import occlusion, rise
    from xbench.metrics import evaluate
    from xbench.metrics.faithfulness import Inputs, spearman
    from xbench.metrics.faithfulness import MuFidelity as XbMuFidelity
    from xbench.models import build_classifier
    from xbench.models.backbones import NO_WEIGHTS
    from xbench.perturbation.programs import CellMasks, RiseMasks, run_program
    from xbench.pipeline.speed import _unsaturate, phantom_images

    tf.random.set_seed(0)  # Xplique's RISE and MuFidelity draw with tf.random: reproducible runs
    print(PATCHES)
    print()
    S, n, B = a.size, a.n, a.xplique_batch
    model = build_classifier(a.backbone, 3, S, weights=NO_WEIGHTS, seed=0)
    x = phantom_images(n, S, 0)[0].astype(np.float32) / 255
    _unsaturate(model, x)
    t = np.asarray(model(x)).argmax(1)
    onehot = np.eye(int(model.output.shape[-1]), dtype=np.float32)[t]

    print(f"{a.backbone}, {n} images of {S} x {S}, targets {t.tolist()}; Xplique batch_size {B}")
    print()
    print("| method | Xplique s | xbench s | xbench / Xplique speed | agreement |")
    print("|---|---|---|---|---|")

    # ---- Occlusion -----------------------------------------------------------------------------------------------
    for stride in a.strides:
        name = f"Occlusion, patch {a.patch}, stride {stride}"
        if (S - a.patch) % stride:
            print(f"| {name} | | | | skipped: (size - patch) = {S - a.patch} is not a multiple of the stride (the window grids differ) |")
            continue
        xp_occ = Occlusion(model, batch_size=B, patch_size=a.patch, patch_stride=stride, occlusion_value=a.baseline)
        tq, q = best_of(lambda e=xp_occ: np.asarray(e.explain(x, onehot))[..., 0])
        tx, (ours, t_ours) = best_of(lambda s=stride: occlusion(model, x, patch_size=a.patch, stride=s, baseline=a.baseline, return_targets=True))
        diff = np.abs(ours.astype(np.float64) * window_counts(S, a.patch, stride) - q).max()
        agree = f"max abs diff (xbench x window count vs Xplique) {fmt(diff)} (Xplique's map up to {fmt(np.abs(q).max())}); targets {'agree' if np.array_equal(t_ours, t) else f'DIFFER {t_ours.tolist()}'}"
        print(f"| {name} | {tq:.2f} | {tx:.2f} | {tq / tx:.1f}x | {agree} |")

    # ---- RISE ----------------------------------------------------------------------------------------------------
    M, grid, keep = a.masks, a.grid, a.keep
    xp_rise = Rise(model, batch_size=B, nb_samples=M, grid_size=grid, preservation_probability=keep, mask_value=0.0)
    tq, q = best_of(lambda: np.asarray(xp_rise.explain(x, onehot))[..., 0])
    tx, ours = best_of(lambda: rise(model, x, targets=t, masks=M, grid=grid, keep_prob=keep, seed=0))
    own_r = [float(np.corrcoef(q[i].ravel(), ours[i].ravel())[0, 1]) for i in range(n)]
    other = rise(model, x, targets=t, masks=M, grid=grid, keep_prob=keep, seed=1)  # the Monte Carlo yardstick: xbench against itself
    seed_r = [float(np.corrcoef(other[i].ravel(), ours[i].ravel())[0, 1]) for i in range(n)]

    program = RiseMasks(S, S, M, grid, keep, 0, np.arange(n), t)
    real_get, real_apply = Rise.__dict__["_get_masks"], Rise.__dict__["_apply_masks"]
    current = {}

    def apply_xbench_masks(single_input, idx, mask_value=0.0):
        m = tf.gather(current["masks"], idx)[..., None]  # (b, S, S, 1)
        return m * single_input[None] + (1.0 - m) * mask_value, m

    diffs = []
    Rise._get_masks = staticmethod(lambda input_shape, nb_samples, grid_size, prob: tf.range(nb_samples))
    Rise._apply_masks = staticmethod(apply_xbench_masks)
    try:
        for i in range(n):
            masks = rise_masks_host(program, i, S)
            check = max(np.abs(masks[m] - program.mask(i, m, S, S)).max() for m in (0, M // 2, M - 1))
            assert check < 1e-5, f"host RISE masks differ from RiseMasks.mask by {check}"
            current["masks"] = tf.constant(masks)
            qi = np.asarray(xp_rise.explain(x[i : i + 1], onehot[i : i + 1]))[0, ..., 0].astype(np.float64)
            num = qi * (masks.astype(np.float64).sum(0) + Rise.EPSILON)  # Xplique's numerator, sum_m p_m M_m
            diffs.append(np.abs(num / (M * keep) - ours[i]).max())
    finally:
        Rise._get_masks, Rise._apply_masks = real_get, real_apply
    agree = (f"same masks: max abs diff (Xplique x sum of masks / (N p) vs xbench) {fmt(max(diffs))} (maps up to {fmt(np.abs(ours).max())}); "
             f"own masks: Pearson r per image {', '.join(f'{r:.3f}' for r in own_r)} "
             f"(xbench seed 0 vs seed 1: {', '.join(f'{r:.3f}' for r in seed_r)})")
    print(f"| RISE, {M} masks, grid {grid}, p {keep} | {tq:.2f} | {tx:.2f} | {tq / tx:.1f}x | {agree} |")

    # ---- MuFidelity ----------------------------------------------------------------------------------------------
    maps = np.random.default_rng(0).normal(size=(n, S, S)).astype(np.float32)  # continuous: no ties among the subset sums
    mg, pct, ns = 9, 0.2, a.mu_samples

    def xplique_mu():
        return XMuFidelity(model, x, onehot, batch_size=B, grid_size=mg, subset_percent=pct, baseline_mode=0.0, nb_samples=ns).evaluate(maps)

    tq, q_mean = best_of(xplique_mu)
    tx, ours = best_of(lambda: evaluate("mufidelity", model, x, maps, targets=t, grid=mg, subset_percent=pct, samples=ns))

    xb_metric = XbMuFidelity(grid=mg, subset_percent=pct, samples=ns)
    inp = Inputs(x, maps.astype(np.float64), np.arange(n), 0)
    cell = CellMasks(S, S, mg, ns, lambda i: None).cell  # (S, S) grid cell of each pixel
    real_perturb = XMuFidelity.__dict__["_perturb_samples"]

    def xbench_subsets(self, inputs, nb):
        keep_ = self._xb_keep[self._xb_off : self._xb_off + nb]
        self._xb_off += nb
        k = tf.repeat(tf.constant(keep_)[None, ..., None], inputs.shape[0], axis=0)  # (n, nb, S, S, 1)
        out = inputs[:, None] * k + (1.0 - k) * 0.0
        return tf.reshape(out, (-1, *inputs.shape[1:])), k

    probs = run_program(model, x, xb_metric.program(inp))  # xbench's (N, 1 + samples, C) probabilities, for the float32 check
    per, per32, geometry = [], [], 0.0
    XMuFidelity._perturb_samples = xbench_subsets
    try:
        for i in range(n):
            bits = xb_metric.bits(inp, i)  # (ns, mg * mg), 1 = removed
            y = probs[i, :, t[i]]  # float32
            cell_sums = np.bincount(cell.ravel(), weights=inp.heatmaps[i].ravel(), minlength=mg * mg)
            per32.append(spearman((y[0] - y[1:]).astype(np.float64), bits @ cell_sums))  # the drop subtracted in float32, as Xplique does
            keep_ = 1.0 - bits[:, cell]  # (ns, S, S), Xplique's convention: 1 = kept
            tf_keep = tf.image.resize(tf.reshape(1.0 - bits, (ns, mg, mg, 1)), (S, S), method="nearest")[..., 0]  # Xplique's own geometry
            geometry = max(geometry, float(np.abs(np.asarray(tf_keep) - keep_).max()))
            m = XMuFidelity(model, x[i : i + 1], onehot[i : i + 1], batch_size=B, grid_size=mg, subset_percent=pct, baseline_mode=0.0, nb_samples=ns)
            m._xb_keep, m._xb_off = keep_.astype(np.float32), 0
            per.append(m.evaluate(maps[i : i + 1]))
    finally:
        XMuFidelity._perturb_samples = real_perturb
    per, per32 = np.asarray(per), np.nan_to_num(np.asarray(per32))
    nan = np.isnan(ours)
    d = np.abs(np.where(nan, 0.0, ours) - per).max()
    d32 = np.abs(per32 - per).max()
    agree = (f"same subsets: max abs diff of per-image rho {fmt(d)}{' (xbench NaN read as 0)' if nan.any() else ''}, "
             f"{fmt(d32)} against xbench's probabilities with the drop f(x) - f(x_s) subtracted in float32 as Xplique does; "
             f"grid-to-pixel maps equal: {'yes' if geometry == 0 else f'NO (max {geometry})'}; "
             f"own subsets: mean rho Xplique {q_mean:.3f}, xbench {np.nanmean(ours):.3f}")
    print(f"| MuFidelity, grid {mg}, {pct}, {ns} samples | {tq:.2f} | {tx:.2f} | {tq / tx:.1f}x | {agree} |")


if __name__ == "__main__":
    main()
