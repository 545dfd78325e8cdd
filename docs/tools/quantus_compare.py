"""xbench's faithfulness metrics against Quantus 0.5.3's on the same model, images and maps: time, and values where the definitions agree.

    pip install quantus==0.5.3   # in the `test` extra
    python docs/tools/quantus_compare.py [--size 64] [--n 4]

Quantus 0.5.3 predates NumPy 2.4: it calls ``float()`` on a one-element array
(an error since 2.4), ``np.trapz`` (removed) and ``int()`` on one-element patch
sizes (Selectivity). Three shims below restore these behaviours, changing no
value. Each metric runs with the settings where the two definitions agree,
made as tests/test_quantus_agreement.py makes them (which asserts the
agreement):

- faithfulness correlation, monotonicity correlation: Quantus's random draws
  (``np.random.choice`` of the subsets, ``np.random.uniform`` of the colours)
  patched to return xbench's, in xbench's order;
- faithfulness estimate: deterministic (no ties in the maps);
- monotonicity (Arya): Quantus 0.5.3 writes the baseline into an all-baseline
  image (every map scores 1); given a ``perturb_func`` that puts the original
  pixels back instead, as AIX360 and xbench;
- selectivity: maps constant on the ``patch_size`` grid's cells up to a small
  noise, so Quantus's greedy patches are xbench's grid; xbench's figure from
  Quantus's curve and p_c(x) (its trapezoid over the removed fraction);
- Sensitivity-N: Quantus's correlation across a batch made to be xbench's
  across subsets: per image and subset size n, a batch of copies whose maps
  put xbench's subsets first (map + C on the subset), ``features_in_step=n``,
  its first step's correlation; the time is that of these batches, not of
  Quantus's SensitivityN on the images;
- IROF: Quantus image by image with a constant baseline of xbench's
  reference (the image's per-channel mean colour); xbench's figure from
  Quantus's curve (1 - its trapezoid with a leading 1, over k / S).

The last column is the largest |Quantus - xbench| per image: ~1e-6 to 1e-5 on
VGG16 at 32 px, the model's own float32 noise (its probabilities on a batch of 1
and of 8 differ by 1.2e-5: Quantus calls one image at a time, xbench batches);
the test's small model gives the same probabilities on both sides and agrees to
~1e-15. Printed: a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import time
import types
from unittest import mock

import numpy as np

if not hasattr(np, "trapz"):  # Quantus 0.5.3 calls np.trapz (removed in NumPy 2.4)
    np.trapz = np.trapezoid


def _shim_quantus():
    """Quantus reads ``float(model.predict(x)[:, y])``: return the one value as a 0-d array (NumPy 2.4 refuses float() of a 1-element array).

    And Selectivity's ``create_patch_slice`` repeats a one-element array per axis, then int()s each: given integers instead.
    """
    from quantus.helpers import utils
    from quantus.helpers.model.tf_model import TensorFlowModel

    class OneValue(np.ndarray):
        def __getitem__(self, item):
            out = np.asarray(super().__getitem__(item))
            return out.reshape(()) if out.size == 1 else out

    real = TensorFlowModel.predict
    TensorFlowModel.predict = lambda self, x, **kw: np.asarray(real(self, x, **kw)).view(OneValue)
    create_patch_slice = utils.create_patch_slice

    def int_patch_size(patch_size, coords):
        size = np.ravel(patch_size)
        return create_patch_slice(tuple(int(s) for s in (size if len(size) > 1 else np.repeat(size, len(tuple(coords))))), coords)

    utils.create_patch_slice = int_patch_size


def _drawing(module_name: str, **random):
    """A patch (context manager) of ``np`` in Quantus's module ``module_name``: NumPy whose ``np.random`` has only the functions ``random``."""

    class NumpyWith(types.ModuleType):
        def __getattr__(self, name):
            return getattr(np, name)

    fake = NumpyWith("numpy")
    fake.random = types.SimpleNamespace(**random)
    return mock.patch.object(importlib.import_module(module_name), "np", fake)


def _run(qm, model, x, t, h):
    """Quantus on channels-last images, the maps as (N, 1, H, W) (Quantus makes the images channels-first, not the maps), probabilities."""
    return qm(model=model, x_batch=x, y_batch=t, a_batch=np.asarray(h)[:, None], channel_first=False, softmax=True)


def _quantus_cases(quantus, model, x, t, maps, fis):
    """name -> (xbench params, maps for both, a function running Quantus and returning xbench's figures from its output)."""
    from quantus.helpers import utils
    from quantus.helpers.utils import expand_indices

    from xbench.metrics.faithfulness import (
        FaithfulnessCorrelation,
        Inputs,
        MonotonicityNguyen,
        SensitivityN,
    )
    from xbench.metrics.registry import metric

    n, S = len(x), x.shape[1]
    inp = Inputs(x, maps, np.arange(n), 0)

    def correlation():
        m = FaithfulnessCorrelation(subset_size=224, runs=100)
        draws = iter([s.astype(np.int64) for i in range(n) for s in m.subsets(inp, i)])
        with _drawing("quantus.metrics.faithfulness.faithfulness_correlation", choice=lambda *a, **k: next(draws)):
            return _run(quantus.FaithfulnessCorrelation(nr_runs=100, subset_size=224, perturb_baseline=0.0, abs=False, normalise=False,
                                                        return_aggregate=False, disable_warnings=True), model, x, t, maps)

    def estimate():
        return _run(quantus.FaithfulnessEstimate(features_in_step=fis, perturb_baseline=0.0, abs=False, normalise=False, disable_warnings=True),
                    model, x, t, maps)

    def arya():
        current = {}

        def put_back(arr, indices, indexed_axes, **kwargs):
            out = np.array(arr, copy=True)
            idx = expand_indices(out, indices, indexed_axes)
            out[idx] = current["x"][idx]
            return out

        qm = quantus.Monotonicity(features_in_step=fis, perturb_func=put_back, perturb_baseline=0.0, abs=False, normalise=False,
                                  disable_warnings=True)
        evaluate_instance = qm.evaluate_instance

        def remembering(model, x, y, a):
            current["x"] = x
            return evaluate_instance(model=model, x=x, y=y, a=a)

        qm.evaluate_instance = remembering
        return np.asarray(_run(qm, model, x, t, maps), np.float64)

    def nguyen():
        m = MonotonicityNguyen(features_in_step=fis, samples=10)
        m.groups(inp)
        draws = iter([c.astype(np.float64) for i in range(n) for c in m.colours(inp, i)])
        with _drawing("quantus.helpers.utils", uniform=lambda *a, **k: next(draws)):
            return _run(quantus.MonotonicityCorrelation(nr_samples=10, features_in_step=fis, abs=True, normalise=False, disable_warnings=True),
                        model, x, t, maps)

    grid = np.random.default_rng(1).uniform(0, 0.01, size=maps.shape)
    cells = S // 8
    grid += np.kron(np.stack([np.random.default_rng(2 + i).permutation(cells * cells).reshape(cells, cells) + 1.0 for i in range(n)]),
                    np.ones((8, 8)))

    def selectivity():
        curves = [np.asarray(c, np.float64) for c in _run(quantus.Selectivity(patch_size=8, perturb_baseline=0.0, abs=False, normalise=False,
                                                                              disable_warnings=True), model, x, t, grid)]
        p0 = np.asarray(model(x), np.float64)[np.arange(n), t]
        return [np.trapezoid(np.r_[p, c], dx=1 / len(c)) for p, c in zip(p0, curves)]

    sens = SensitivityN(fractions=(1 / 16, 1 / 4, 1 / 2), runs=10)

    def sensitivity():
        out = []
        for i in range(n):
            ranks, C = sens.orders(inp, i), float(maps[i].max() - maps[i].min()) + 0.5
            out.append(np.mean([_run(quantus.SensitivityN(features_in_step=k, perturb_baseline=0.0, abs=False, normalise=False,
                                                          return_aggregate=False, disable_warnings=True),
                                     model, np.repeat(x[i : i + 1], sens.runs, 0), np.full(sens.runs, t[i]), maps[i] + C * (ranks < k))[0]
                                for k in sens.sizes(S * S)]))
        return out

    def irof():
        curves, auc = [], utils.calculate_auc

        def spy(values, dx=1):
            curves.append(np.asarray(values, np.float64))
            return auc(values, dx=dx)

        ref = metric("irof").reference
        with mock.patch.object(utils, "calculate_auc", spy):
            for i in range(n):
                _run(quantus.IROF(perturb_baseline=ref(x[i], i)[0, 0], abs=False, normalise=False, return_aggregate=False, disable_warnings=True),
                     model, x[i : i + 1], t[i : i + 1], maps[i : i + 1])
        return [1 - np.trapezoid(np.r_[1.0, c], dx=1 / len(c)) for c in curves]

    return {
        "faithfulness_correlation": ({"runs": 100, "subset_size": 224}, maps, correlation),
        "faithfulness_estimate": ({"features_in_step": fis}, maps, estimate),
        "monotonicity_arya": ({"features_in_step": fis}, maps, arya),
        "monotonicity_nguyen": ({"samples": 10, "features_in_step": fis}, maps, nguyen),
        "selectivity": ({"patch_size": 8}, grid, selectivity),
        "sensitivity_n": ({"fractions": sens.fractions, "runs": sens.runs}, maps, sensitivity),
        "irof": ({}, maps, irof),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=64, help="image side: a multiple of 8 (Selectivity's grid), above 15 (224-pixel subsets)")
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
    print("| metric | Quantus s | xbench s | xbench / Quantus speed | max abs difference (settings where defined alike) |")
    print("|---|---|---|---|---|")
    for name, (params, h, quantus_run) in _quantus_cases(quantus, model, x, t, maps, fis=16).items():
        evaluate(name, model, x[:1], h[:1], targets=t[:1], **params)  # compile xbench's step once (Quantus calls Keras predict)
        t0 = time.perf_counter()
        try:
            q = quantus_run()
        except (TypeError, IndexError) as exc:  # more of Quantus 0.5.3's NumPy < 2.4 assumptions than the shims cover
            print(f"| `{name}` | Quantus 0.5.3 fails here (NumPy {np.__version__}): {str(exc).splitlines()[0]} | | | |")
            continue
        tq = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = evaluate(name, model, x, h, targets=t, **params)
        tx = time.perf_counter() - t0
        print(f"| `{name}` | {tq:.2f} | {tx:.2f} | {tq / tx:.1f}x | {np.nanmax(np.abs(np.asarray(q, np.float64) - ours)):.2g} |")


if __name__ == "__main__":
    main()
