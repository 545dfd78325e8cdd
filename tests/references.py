"""Reference implementations and small fixtures that several test modules use (a plain module, not a test module).

- :func:`tiny_model`: a small Conv-Dense classifier; :func:`slow_curves`: the perturbation engine's per-step reference loop.
- :func:`tiny_bn_model`, :func:`guided_case`, :func:`guided_errors`: guided backprop checked against NumPy (also run under JAX).
- :func:`report_job`: a fake finished job, as the report reads it.
"""

import math
from pathlib import Path

import keras
import numpy as np

from xbench.explain.guided import guided_gradients
from xbench.perturbation.perturbations import image_rng


def tiny_model(h, w, c=3, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((h, w, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(c, name="logits")(x)
    return keras.Model(inp, keras.layers.Softmax()(x))


def slow_curves(model, images, heatmaps, region_size, order, perturbation, seed, ids, targets=None):
    """Per image, per step: perturb one region in NumPy, call the model on one image."""
    n, H, W, _ = images.shape
    rows, cols = math.ceil(H / region_size), math.ceil(W / region_size)
    out = []
    for i in range(n):
        boxes = [(r * region_size, min(H, (r + 1) * region_size), c * region_size, min(W, (c + 1) * region_size)) for r in range(rows) for c in range(cols)]
        score = [float(np.sum(heatmaps[i, a:b, c:d], dtype=np.float64)) for a, b, c, d in boxes]
        L = len(boxes)
        if order == "morf":
            seq = sorted(range(L), key=lambda r: (-score[r], r))
        elif order == "lerf":
            seq = sorted(range(L), key=lambda r: (score[r], r))
        else:
            seq = list(np.random.default_rng([seed, int(ids[i]), 0x0D]).permutation(L))
        x = images[i].astype(np.float32).copy()
        f = lambda z: np.asarray(model(z[None]))[0]
        p0 = f(x)
        t = int(np.argmax(p0)) if targets is None else int(targets[i])
        curve = [p0[t]]
        if perturbation.mask_dependent:  # ROAD: re-impute the whole removed set by a direct solve at every step
            original, draws = x.copy(), perturbation.draws(x, image_rng(seed, ids[i]))
            removed = np.zeros((H, W), bool)
            for r in seq:
                a, b, c, d = boxes[r]
                removed[a:b, c:d] = True
                curve.append(f(perturbation.exact(original, removed, draws))[t])
            out.append(curve)
            continue
        g = perturbation(x, image_rng(seed, ids[i]))
        for r in seq:
            a, b, c, d = boxes[r]
            x[a:b, c:d] = g[a:b, c:d]
            curve.append(f(x)[t])
        out.append(curve)
    return np.asarray(out, np.float32)


def tiny_bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((12, 12, 3), name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inp)
    h = keras.layers.BatchNormalization(name="bn_a")(h)
    h = keras.layers.Activation("relu", name="relu_a")(h)
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_b")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    z = keras.layers.Dense(3, name="logits")(h)
    return keras.Model(inp, keras.layers.Softmax(name="probs")(z))


def guided_case(guided_relu_cap=1.0):
    """A Conv-ReLU-Conv(ReLU)-Dense-ReLU(cap)-Dense model and its guided backprop computed by hand in NumPy.

    Returns (model, images, targets, guided reference, plain-gradient reference), references (N, 6, 6, 3) float64.
    """
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3), name="image")
    h = keras.layers.Conv2D(4, 3, name="conv1")(inp)  # valid: 4 x 4
    h = keras.layers.Activation("relu", name="act1")(h)
    h = keras.layers.Conv2D(4, 1, activation="relu", name="conv2")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(6, name="dense")(h)
    h = keras.layers.ReLU(max_value=guided_relu_cap, name="relu_cap")(h)
    z = keras.layers.Dense(3, name="logits")(h)
    model = keras.Model(inp, keras.layers.Softmax(name="probs")(z))
    rng = np.random.default_rng(0)
    params = [rng.normal(scale=0.6, size=w.shape) for w in model.get_weights()]
    model.set_weights([p.astype(np.float32) for p in params])
    W1, b1, W2, b2, W3, b3, W4, b4 = params
    x = rng.random((4, 6, 6, 3))
    t = np.array([0, 1, 2, 1])

    z1 = np.zeros((4, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            z1[:, i, j] = np.einsum("nabc,abck->nk", x[:, i : i + 3, j : j + 3], W1) + b1
    z2 = np.einsum("nijc,ck->nijk", np.maximum(z1, 0), W2[0, 0]) + b2
    z3 = np.maximum(z2, 0).reshape(4, -1) @ W3 + b3

    def backward(guided):
        gate = lambda z, R, cap=None: R * (z > 0) * ((z < cap) if cap else 1) * ((R > 0) if guided else 1)
        R = gate(z3, W4[:, t].T, guided_relu_cap)
        R = gate(z2, (R @ W3.T).reshape(4, 4, 4, 4))
        R = gate(z1, np.einsum("nijk,ck->nijc", R, W2[0, 0]))
        Rx = np.zeros_like(x)
        for i in range(4):
            for j in range(4):
                Rx[:, i : i + 3, j : j + 3] += np.einsum("nk,abck->nabc", R[:, i, j], W1)
        return Rx

    assert ((z3 > 0) & (z3 < guided_relu_cap)).any() and (z3 > guided_relu_cap).any()  # the cap gates something
    return model, x.astype(np.float32), t, backward(True), backward(False)


def guided_errors() -> dict:
    """Max errors of guided_gradients against the guided and the plain NumPy references (also run under JAX)."""
    model, x, t, ref, plain = guided_case()
    ours = guided_gradients(model, x, targets=t, batch_size=3)
    scale = np.abs(ref).max()
    return {"guided": float(np.abs(ours - ref).max() / scale), "plain": float(np.abs(ours - plain).max() / scale),
            "relu_kept": model.get_layer("conv2").activation is keras.activations.relu}


def report_job(path, seed, backbone="vgg16", ids=(0, 1, 2, 3), drop=0.5):
    """A fake finished job (no model): one Grad-CAM MoRF curve per image falling from 1 to ``drop``."""
    from xbench.metrics.aopc import aopc_per_image
    from xbench.pipeline import results as R

    ids = np.asarray(ids)
    labels = np.zeros(len(ids), int)
    curve = np.tile(np.linspace(1, drop, 5), (len(ids), 1)).astype(np.float32) + 0.01 * np.arange(len(ids))[:, None]
    est = lambda v, n: R.Estimate(float(v), [float(v), float(v)], n)
    cs = R.ClassScores(1.0, 1.0, 1.0, 1)
    test = R.TestReport(["a", "b"], len(ids), {"a": cs, "b": cs}, 1.0, cs, cs, [[1, 0], [0, 1]])
    curves = R.Curves(ids, labels, labels, labels, {("gradcam", "morf"): curve})
    scores = {"gradcam": R.MethodScores({"morf": R.OrderScores(est(aopc_per_image(curve).mean(), len(ids)), [], {}, [])}, 0, 0, {})}
    scoring = R.Scoring("gradcam", len(ids), len(ids), len(ids), "correct", "predicted", 4, [2, 2], 4, 4, {"name": "constant", "value": 0.0},
                        ["morf"], scores, False, {}, 0.0)
    data = R.DataSummary("synthetic", "/r", 8, ["a", "b"], ["b"], len(ids), {}, {}, 0, [], False, 0, [])
    metrics = R.JobMetrics("0", "tensorflow", "3", "x", seed, data, R.ModelSummary(backbone, None, 1, 1), R.TrainingSummary({}, 0, 0.0, 0, False, {}),
                           test, {}, {"model": {"backbone": backbone}, "seed": seed}, scoring)
    return R.JobResult(Path(path), metrics, curves)


def readme_classifier(path) -> None:
    """Save the README's ``my_classifier.keras``: a small 224-px, 4-class Keras classifier (seeded), as "Score your own model" uses."""
    keras.utils.set_random_seed(11)
    inp = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(4, 5, strides=4, activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="predictions")(x)).save(path)


def torch_net(num_classes: int = 4, seed: int = 0, channels: int = 3, head_scale: float = 20.0):
    """A small ``torch.nn.Module`` classifier, seeded, nothing downloaded (needs torch): (N, channels, S, S) -> (N, num_classes) logits.

    ``features`` = Conv2d(channels, 6, 3, stride 2) -> ReLU(inplace) -> Conv2d(6, 8, 3) -> ReLU(inplace)
    (Grad-CAM's layer: ``features.2``, whose output an in-place ReLU overwrites in the module), a
    mean over positions, ``head`` = Linear(8, num_classes) with its weights times ``head_scale`` so
    the softmax moves when pixels change (an untrained head's logits are nearly equal).
    """
    import torch
    from torch import nn

    class TinyTorchNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(channels, 6, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                                          nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True))
            self.head = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.head(self.features(x).mean((2, 3)))

    torch.manual_seed(seed)
    net = TinyTorchNet()
    with torch.no_grad():
        net.head.weight.mul_(head_scale)
    return net.eval()
