"""xbench's faithfulness metrics against Quantus 0.5.3's on the same model, images and maps: time, and values where the definitions agree.

    pip install quantus==0.5.3   # not an xbench dependency
    python docs/tools/quantus_compare.py [--size 64] [--n 4]

Quantus 0.5.3 predates NumPy 2.4: it calls ``float()`` on a one-element array
(an error since 2.4) and ``np.trapz`` (removed). Two shims below restore both
behaviours, changing no value. Each metric runs with the settings where the two
definitions agree (probabilities, a constant baseline of 0, equal groups); the
"agree" column compares the per-image values where they can (faithfulness
estimate: deterministic, no ties in the maps). The others draw their random
subsets from different generators, so only their time is compared. Printed: a
Markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

if not hasattr(np, "trapz"):  # Quantus 0.5.3 calls np.trapz (removed in NumPy 2.4)
    np.trapz = np.trapezoid


def _shim_quantus():
    """Quantus reads ``float(model.predict(x)[:, y])``: return the one value as a 0-d array (NumPy 2.4 refuses float() of a 1-element array)."""
    from quantus.helpers.model.tf_model import TensorFlowModel

    class OneValue(np.ndarray):
        def __getitem__(self, item):
            out = np.asarray(super().__getitem__(item))
            return out.reshape(()) if out.size == 1 else out

    real = TensorFlowModel.predict
    TensorFlowModel.predict = lambda self, x, **kw: np.asarray(real(self, x, **kw)).view(OneValue)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--backbone", default="vgg16")
    a = p.parse_args()
    import quantus

    from xbench.metrics import evaluate
    from xbench.models import build_classifier
    from xbench.models.backbones import NO_WEIGHTS
    from xbench.pipeline.speed import _unsaturate, phantom_images

    _shim_quantus()
    S, n = a.size, a.n
    model = build_classifier(a.backbone, 3, S, weights=NO_WEIGHTS, seed=0)
    x = phantom_images(n, S, 0)[0].astype(np.float32) / 255
    _unsaturate(model, x)
    maps = np.random.default_rng(0).normal(size=(n, S, S))  # continuous: no ties, so both sort the pixels alike
    t = np.asarray(model(x)).argmax(1)
    fis = 16
    cases = {
        "faithfulness_correlation": (quantus.FaithfulnessCorrelation(nr_runs=100, subset_size=224, perturb_baseline=0.0, abs=False, normalise=False,
                                                                     return_aggregate=False, disable_warnings=True),
                                     {"runs": 100, "subset_size": 224}, False),
        "faithfulness_estimate": (quantus.FaithfulnessEstimate(features_in_step=fis, perturb_baseline=0.0, abs=False, normalise=False,
                                                               disable_warnings=True), {"features_in_step": fis}, True),
        "monotonicity_nguyen": (quantus.MonotonicityCorrelation(nr_samples=10, features_in_step=fis, abs=True, normalise=False, disable_warnings=True),
                                {"samples": 10, "features_in_step": fis}, False),
        "selectivity": (quantus.Selectivity(patch_size=8, perturb_baseline=0.0, abs=False, normalise=False, disable_warnings=True), {"patch_size": 8}, False),
        "irof": (quantus.IROF(perturb_baseline="mean", abs=False, normalise=False, return_aggregate=False, disable_warnings=True), {}, False),
    }
    print(f"| metric | Quantus s | xbench s | xbench / Quantus speed | max abs difference (where defined alike) |")
    print("|---|---|---|---|---|")
    for name, (qm, params, comparable) in cases.items():
        evaluate(name, model, x[:1], maps[:1], targets=t[:1], **params)  # compile xbench's step once (Quantus calls Keras predict)
        t0 = time.perf_counter()
        try:
            q = qm(model=model, x_batch=x, y_batch=t, a_batch=maps[..., None], channel_first=False, softmax=True)
        except (TypeError, IndexError) as exc:  # more of Quantus 0.5.3's NumPy < 2.4 assumptions than the shims cover
            print(f"| `{name}` | Quantus 0.5.3 fails here (NumPy {np.__version__}, channels-last maps): {str(exc).splitlines()[0]} | | | |")
            continue
        tq = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = evaluate(name, model, x, maps, targets=t, **params)
        tx = time.perf_counter() - t0
        diff = f"{np.nanmax(np.abs(np.asarray(q, np.float64) - ours)):.2g}" if comparable else "(different random draws / definition)"
        print(f"| `{name}` | {tq:.2f} | {tx:.2f} | {tq / tx:.1f}x | {diff} |")


if __name__ == "__main__":
    main()
