"""``score.method=auto`` over a grid: full vs incremental curves, and which one auto takes (docs/performance.md, "auto over a grid").

    python docs/tools/auto_grid.py [--backbones vgg16,densenet201] [--sizes 64,128,224] [--ns 1,4,16,64] [--grid 8] [--steps 8]

For every (backbone, image size, N): random images and maps (the bench's
inputs, logits recentred by ``_unsaturate``), MoRF with Gaussian noise, regions
of size // grid px, ``--steps`` steps; the full engine and the incremental
runner each warmed once, then timed interleaved ``--repeats`` times, best of
each. auto's choice is ``engine.choose_method("auto", ...)`` with the settings
scoring passes (N images, the 1 GiB budget); its time is the chosen method's
time (the decision itself is a FLOP count, microseconds). Printed: a Markdown
table, auto / best = time of auto's choice over the faster one's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbones", default="vgg16,densenet201")
    p.add_argument("--sizes", default="64,128,224")
    p.add_argument("--ns", default="1,4,16,64")
    p.add_argument("--grid", type=int, default=8, help="regions per side (region size = image size // grid)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-pairs", type=int, default=1200, help="skip points with more (image, step) pairs than this (time)")
    a = p.parse_args()
    import keras

    from xbench.models import build_classifier
    from xbench.models.backbones import NO_WEIGHTS
    from xbench.perturbation import GaussianNoise
    from xbench.perturbation.engine import choose_method, perturbation_curves
    from xbench.pipeline.speed import _unsaturate

    print(f"keras backend {keras.backend.backend()}; MoRF, Gaussian noise, {a.steps} steps, regions = size // {a.grid}, best of {a.repeats}")
    print("| backbone | px | region | N | full s | incremental s | faster | auto takes | auto / best |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 1.0
    for backbone in a.backbones.split(","):
        for size in (int(s) for s in a.sizes.split(",")):
            model = build_classifier(backbone, 4, size, weights=NO_WEIGHTS, seed=0)
            rng = np.random.default_rng(0)
            region = size // a.grid
            pert = GaussianNoise(0.1)
            for n in (int(s) for s in a.ns.split(",")):
                if n * (a.steps + 1) > a.max_pairs:
                    continue
                x = rng.random((n, size, size, 3), dtype=np.float32)
                h = rng.random((n, size, size), dtype=np.float32)
                _unsaturate(model, x[:16])
                kw = {"region_size": region, "order": "morf", "perturbation": pert, "seed": 0, "max_steps": a.steps}
                chosen = choose_method("auto", model, "morf", pert, size, size, region, a.steps, n) is not None
                times = {"full": [], "incremental": []}
                for method in times:  # warm: compile at these shapes
                    perturbation_curves(model, x, h, method=method, **kw)
                for _ in range(a.repeats):
                    for method in times:
                        t0 = time.perf_counter()
                        perturbation_curves(model, x, h, method=method, **kw)
                        times[method].append(time.perf_counter() - t0)
                full, inc = min(times["full"]), min(times["incremental"])
                auto = inc if chosen else full
                ratio = auto / min(full, inc)
                worst = max(worst, ratio)
                print(f"| {backbone} | {size} | {region} | {n} | {full:.2f} | {inc:.2f} | {'incremental' if inc < full else 'full'} | "
                      f"{'incremental' if chosen else 'full'} | {ratio:.2f} |", flush=True)
    print(f"\nworst auto / best: {worst:.2f}")


if __name__ == "__main__":
    main()
