"""Maps per second of the robustness metrics' batched path against a loop that calls the explainer once per draw.

    python docs/tools/robustness_speed.py [--size 72] [--n 8] [--draws 10] [--backbones vgg16 densenet201]
                                          [--explainers gradcam integrated_gradients] [--ig-steps 50] [--repeats 2]

Both paths compute Max-sensitivity (:class:`xbench.metrics.robustness.MaxSensitivity`) of
the same maps on the same noise draws (the metric's own, per (seed, image id,
draw)), with the explainer's own batch size:

- batched: ``MaxSensitivity.details``: all D noisy copies of the n images in
  ONE explainer call (and one logits pass for the predicted classes);
- per-draw loop: for each draw j, one explainer call on the n images x + delta_j
  (and one logits pass), as Quantus's ``evaluate_batch`` does; then the same formula.

The figures of the two paths must agree (asserted, rtol 1e-5). Models: the
default backbones from :func:`xbench.models.build_classifier` with random
(He-normal) weights (``weights="none"``: no download), 2 classes. Times: one
warm-up run of each path first (tracing excluded), then the best of
``--repeats``. "maps/s" counts the n x D maps of noisy images. Printed: a
Markdown table; the issue asks the batched path for >= 3x the loop.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def per_draw_loop(metric, explainer, model, x, maps, targets, ids, seed):
    """The loop: one explainer call (and one logits pass) per draw on all n images; the metric's formula on the result."""
    from xbench.explain.attribution import logits_net
    from xbench.explain.context import ExplainContext
    from xbench.metrics.robustness import Chunk, logits_of
    from xbench.models.adapt import adapted

    n, H, W = maps.shape
    D = metric.nr_draws
    net = logits_net(adapted(model, x))
    h0 = logits_of(net, x)
    ap = np.empty((n, D, H, W))
    xp = np.empty((n, D, H, W, 3), np.float32)
    hp = np.empty((n, D, h0.shape[1]))
    ctx = ExplainContext(image_ids=ids, seed=seed)
    for j in range(D):
        delta = np.stack([metric.draw(seed, i, j, (H, W, 3)) for i in ids])
        xj = (x.astype(np.float64) + delta).astype(np.float32)
        ap[:, j] = explainer(model, xj, targets, ctx)
        hp[:, j] = logits_of(net, xj)
        xp[:, j] = xj
    with np.errstate(divide="ignore", invalid="ignore"):
        return metric.per_draw(Chunk(np.asarray(maps, np.float64), ap, x, xp, h0, hp)).max(axis=1)


def best_time(fn, repeats):
    fn()  # warm-up: traces and compiles
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=72, help="image side in px (the default job's 72; >= 32)")
    p.add_argument("--n", type=int, default=8, help="images")
    p.add_argument("--draws", type=int, default=10, help="noise draws D per image")
    p.add_argument("--backbones", nargs="+", default=["vgg16", "densenet201"])
    p.add_argument("--explainers", nargs="+", default=["gradcam", "integrated_gradients"])
    p.add_argument("--ig-steps", type=int, default=50, help="Integrated Gradients' path steps")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import keras

    from xbench.explain import build
    from xbench.metrics.robustness import MaxSensitivity
    from xbench.models import build_classifier

    rng = np.random.default_rng(args.seed)
    x = rng.uniform(0, 1, (args.n, args.size, args.size, 3)).astype(np.float32)
    ids = np.arange(args.n, dtype=np.int64)
    rows = []
    for backbone in args.backbones:
        model = build_classifier(backbone, 2, args.size, weights="none", seed=args.seed)
        t = np.asarray(model.predict_on_batch(x)).argmax(1)
        for name in args.explainers:
            explainer = build(name, steps=args.ig_steps) if name == "integrated_gradients" else build(name)
            maps = explainer(model, x, t, None)
            metric = MaxSensitivity(explainer=explainer, nr_draws=args.draws)
            t_batched, batched = best_time(lambda: metric(model, x, maps, t, image_ids=ids, seed=args.seed), args.repeats)
            t_loop, looped = best_time(lambda: per_draw_loop(metric, explainer, model, x, maps, t, ids, args.seed), args.repeats)
            np.testing.assert_allclose(batched, looped, rtol=1e-5, err_msg=f"{backbone}/{name}: the two paths disagree")
            n_maps = args.n * args.draws
            rows.append((backbone, name, n_maps / t_batched, n_maps / t_loop, t_loop / t_batched,
                         float(np.max(np.abs(batched - looped) / np.maximum(np.abs(looped), 1e-300)))))
        keras.backend.clear_session()

    print(f"\n{args.n} images of {args.size} px, D = {args.draws} draws, Max-sensitivity, keras {keras.__version__} ({keras.backend.backend()}); "
          f"best of {args.repeats} after a warm-up\n")
    print("| backbone | explainer | batched maps/s | per-draw loop maps/s | speed-up | max rel. diff |")
    print("|---|---|---:|---:|---:|---:|")
    for backbone, name, fb, fl, s, diff in rows:
        print(f"| {backbone} | {name} | {fb:.1f} | {fl:.1f} | {s:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
