"""Incremental inference: the window arithmetic against brute force, and incremental curves against the full engine."""

import functools
import logging

import keras
import numpy as np
import pytest

from xbench.perturbation import (
    Blur,
    Constant,
    GaussianNoise,
    ImageMean,
    Road,
    UniformNoise,
    perturbation_curves,
)
from xbench.perturbation.engine import AUTO_MIN_SPEEDUP, choose_method
from xbench.perturbation.incremental import estimate, plan, predicted_speedup, runner
from xbench.perturbation.windows import (
    Axis,
    Node,
    propagate,
    region_boxes,
    window_tables,
)

#: Backend-sensitive kernel tests: tests/test_jax_backend.py reruns them under JAX.
pytestmark = pytest.mark.jax_rerun


L = keras.layers


# --- window arithmetic ---------------------------------------------------------------------------

def _geometries():
    rng = np.random.default_rng(0)
    out = []
    for kind in ("conv", "depthwise", "avg", "max", "pad"):
        for _ in range(6):
            n = int(rng.integers(6, 17))
            k = int(rng.integers(1, 5))
            s = int(rng.integers(1, 4))
            d = int(rng.integers(1, 3)) if kind in ("conv", "depthwise") and s == 1 else 1
            pad = str(rng.choice(["valid", "same"])) if kind != "avg" else "valid"
            if (k - 1) * d + 1 > n:
                k = 1
            out.append((kind, n, k, s, d, pad, (int(rng.integers(0, 3)), int(rng.integers(0, 3)))))
    return out


def _layer(kind, k, s, d, pad, zp):
    if kind == "conv":
        return L.Conv2D(2, (k, k), strides=s, dilation_rate=d, padding=pad, kernel_initializer="random_normal", bias_initializer="ones")
    if kind == "depthwise":
        return L.DepthwiseConv2D((k, k), strides=s, dilation_rate=d, padding=pad, depthwise_initializer="random_normal")
    if kind == "avg":
        return L.AveragePooling2D(k, strides=s, padding=pad)
    if kind == "max":
        return L.MaxPooling2D(k, strides=s, padding=pad)
    return L.ZeroPadding2D((zp, zp))


def _axis(kind, n, k, s, d, pad, zp, which):
    return Axis.padding(zp[0], zp[1], n) if kind == "pad" else Axis.of(k, s, pad, n, d)


@pytest.mark.parametrize("geo", _geometries(), ids=lambda g: "-".join(map(str, g[:6])))
def test_affected_outputs_are_the_bounding_box_of_those_a_changed_pixel_moves(geo):
    kind, n, k, s, d, pad, zp = geo
    keras.utils.set_random_seed(1)
    layer = _layer(kind, k, s, d, pad, zp)
    x = np.random.default_rng(2).random((1, n, n + 1, 2)).astype(np.float32)
    base = np.asarray(layer(x))
    ay, ax = _axis(kind, n, k, s, d, pad, zp, 0), _axis(kind, n + 1, k, s, d, pad, zp, 1)
    assert base.shape[1:3] == (ay.n_out, ax.n_out)
    for a in range(n):
        for b in range(a + 1, min(n, a + 3) + 1):
            y = x.copy()
            y[0, a:b, 3 % (n + 1)] += 100.0  # large and positive: a max pool sees it too
            moved = np.flatnonzero(np.abs(np.asarray(layer(y)) - base)[0].max(axis=(1, 2)) > 0)
            lo, hi = ay.affected(a, b)
            assert set(moved.tolist()) <= set(range(lo, hi)), (a, b)  # never misses an output
            if d == 1:  # and is tight: the bounding box of what moves (a stride past the kernel skips rows)
                assert ((moved.min(), moved.max() + 1) if moved.size else (0, 0)) == (lo, hi), (a, b)
            else:  # a dilated kernel's box may run d - 1 rows past the outermost tap on each side
                assert moved.size and moved.min() - lo < d and hi - moved.max() - 1 < d, (a, b)


@pytest.mark.parametrize("geo", [g for g in _geometries() if g[0] != "pad"][::3], ids=lambda g: "-".join(map(str, g[:6])))
def test_an_output_window_computed_from_its_needed_input_equals_the_layer(geo):
    from xbench.perturbation.incremental import _window_op

    kind, n, k, s, d, pad, zp = geo
    keras.utils.set_random_seed(1)
    layer = _layer(kind, k, s, d, pad, zp)
    x = np.random.default_rng(2).random((1, n, n, 2)).astype(np.float32)
    full = np.asarray(layer(x))
    a = Axis.of(k, s, pad, n, d)
    fill = -np.inf if kind == "max" else 0.0
    for lo in range(a.n_out):
        for hi in range(lo + 1, a.n_out + 1):
            i0, i1 = a.needed(lo, hi)
            padded = np.full((1, i1 - i0, i1 - i0, 2), fill, np.float32)
            src = x[:, max(i0, 0):min(i1, n), max(i0, 0):min(i1, n)]
            o = max(0, -i0)
            padded[:, o:o + src.shape[1], o:o + src.shape[2]] = src
            np.testing.assert_allclose(np.asarray(_window_op(layer, padded)), full[:, lo:hi, lo:hi], rtol=1e-5, atol=1e-6)


def test_region_boxes_cover_the_grid_with_smaller_last_row_and_column():
    b = region_boxes(10, 7, 4)
    assert b.tolist() == [[0, 4, 0, 4], [0, 4, 4, 7], [4, 8, 0, 4], [4, 8, 4, 7], [8, 10, 0, 4], [8, 10, 4, 7]]


def _every_layer_model(h, w, seed=0):
    """A small graph with every supported layer, two merges and a layer the windows stop at."""
    keras.utils.set_random_seed(seed)
    from xbench.models.preprocess import Preprocess

    inp = keras.Input((h, w, 3), name="image")
    x = Preprocess("torch", name="preprocess")(inp)
    x = L.ZeroPadding2D(((1, 2), (2, 1)))(x)
    x = L.Conv2D(6, 3, strides=2, padding="valid")(x)
    x = L.BatchNormalization(epsilon=1e-3)(x)
    x = L.ReLU()(x)
    a = L.Conv2D(6, 3, padding="same", dilation_rate=2, activation="elu")(x)
    b = L.DepthwiseConv2D(3, padding="same")(x)
    b = L.LeakyReLU(0.1)(b)
    x = L.Add()([a, b])
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    c = L.Conv2D(4, 1, activation="tanh")(x)
    x = L.Concatenate()([x, c])
    x = L.Rescaling(0.5, offset=0.1)(x)
    x = L.Dropout(0.5)(x)
    x = L.AveragePooling2D(2)(x)
    x = L.Conv2D(8, 3, strides=2, padding="same")(x)
    x = L.Activation("swish")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(3, name="logits")(x)
    model = keras.Model(inp, L.Softmax(name="probs")(x))
    bn = [l for l in model.layers if isinstance(l, L.BatchNormalization)][0]
    rng = np.random.default_rng(seed)
    bn.set_weights([rng.normal(1, 0.2, 6), rng.normal(0, 0.3, 6), rng.normal(0, 0.3, 6), rng.uniform(0.5, 2, 6)])
    return model


def _layer_outputs(model, x):
    inner = [l for l in model.layers[1:]]
    probe = keras.Model(model.inputs[0], [l.output for l in inner])
    return {l.name: np.asarray(v) for l, v in zip(inner, probe(x))}


def test_the_boxes_of_a_graph_hold_every_activation_a_region_moves():
    model = _every_layer_model(29, 26)
    p = plan(model)
    assert p.ends_at == "gap (GlobalAveragePooling2D)"
    x = np.random.default_rng(0).random((1, 29, 26, 3)).astype(np.float32)
    base = _layer_outputs(model, x)
    win = window_tables(p.nodes, 29, 26, 7)
    names = [None] + [l.name for l in p.layers[1:]]
    for r, (r0, r1, c0, c1) in enumerate(region_boxes(29, 26, 7)):
        y = x.copy()
        y[0, r0:r1, c0:c1] = np.random.default_rng(r).random((r1 - r0, c1 - c0, 3))
        moved = _layer_outputs(model, y)
        for i in range(1, len(p.nodes)):
            diff = np.abs(moved[names[i]] - base[names[i]])[0].max(-1) > 0
            rows, cols = np.nonzero(diff)
            b = win.boxes[r, i]
            assert rows.size and rows.min() >= b[0] and rows.max() < b[1] and cols.min() >= b[2] and cols.max() < b[3], names[i]
            s, size = win.starts[r, i], win.size[i]
            assert s[0] <= b[0] and b[1] <= s[0] + size[0] and s[1] <= b[2] and b[3] <= s[1] + size[1], names[i]  # the window holds the box
            assert 0 <= s[0] and s[0] + size[0] <= p.nodes[i].shape[0] and 0 <= s[1] and s[1] + size[1] <= p.nodes[i].shape[1]


def test_a_conv_chain_box_grows_by_the_halo_by_hand():
    # 3x3 'same' twice, then a 2x2 pool: a 4-px change at rows [8, 12) of 32 reaches
    # [7, 13), then [6, 14), then pool outputs [3, 7).
    nodes = [Node("input", shape=(32, 32))]
    nodes.append(Node("window", [0], (Axis.of(3, 1, "same", 32),) * 2, (32, 32)))
    nodes.append(Node("pixel", [1], None, (32, 32)))
    nodes.append(Node("window", [2], (Axis.of(3, 1, "same", 32),) * 2, (32, 32)))
    nodes.append(Node("window", [3], (Axis.of(2, 2, "valid", 32),) * 2, (16, 16)))
    boxes = propagate(nodes, (8, 12, 0, 4))
    assert boxes.tolist() == [[8, 12, 0, 4], [7, 13, 0, 5], [7, 13, 0, 5], [6, 14, 0, 6], [3, 7, 0, 3]]


# --- curves --------------------------------------------------------------------------------------

PERTURBATIONS = {"gaussian": GaussianNoise(0.1), "uniform": UniformNoise(), "constant": Constant(0.0), "mean": ImageMean(), "blur": Blur(2.0)}


#: _every_layer_model once per shape for the cases of a test that differ only in the order: the engine caches its compiled steps on the
#: model, so the orders share one trace (no test changes the weights).
_shared_every_layer_model = functools.cache(_every_layer_model)


def _curves_both(model, x, h, **kw):
    full = perturbation_curves(model, x, h, method="full", **kw)
    inc = perturbation_curves(model, x, h, method="incremental", **kw)
    return full, inc


@pytest.mark.parametrize("size,region", [pytest.param(28, 7, marks=pytest.mark.not_on_jax), (29, 6)])  # a multiple of the region, and not (JAX: not)
@pytest.mark.parametrize("order", ["morf", "lerf", "random"])
def test_incremental_curves_equal_full_ones_on_a_graph_of_every_layer(size, region, order):
    model = _shared_every_layer_model(size, size + 3)  # one per size: the orders share its compiled steps
    run = runner(model, size, size + 3, region)
    assert (~run.win.full[run.p.stored]).sum() >= 7  # windows, not whole tensors, for all but the last layer: the test exercises them
    rng = np.random.default_rng(size)
    x = rng.random((3, size, size + 3, 3)).astype(np.float32)
    h = rng.random((3, size, size + 3)).astype(np.float32)
    for name, pert in PERTURBATIONS.items():
        full, inc = _curves_both(model, x, h, region_size=region, order=order, perturbation=pert, seed=4, batch_size=2)
        assert full.std() > 1e-3, name  # the curves move, so equality means something
        np.testing.assert_allclose(inc, full, atol=1e-5, rtol=0, err_msg=name)


def test_incremental_curves_follow_max_steps_targets_and_chunks():
    model = _every_layer_model(21, 21)
    rng = np.random.default_rng(1)
    x = rng.random((5, 21, 21, 3)).astype(np.float32)
    h = rng.random((5, 21, 21)).astype(np.float32)
    t = np.array([0, 1, 2, 0, 1])
    full, inc = _curves_both(model, x, h, region_size=5, max_steps=7, targets=t, batch_size=2, image_ids=[9, 3, 5, 7, 11], order="random")
    assert inc.shape == (5, 8)
    np.testing.assert_allclose(inc, full, atol=1e-5, rtol=0)
    one = perturbation_curves(model, x, h, region_size=5, max_steps=7, targets=t, image_ids=[9, 3, 5, 7, 11], order="random", method="incremental", batch_size=5)
    np.testing.assert_allclose(one, inc, atol=5e-6, rtol=0)  # chunks of 2 (a short last one) or one chunk of 5: the same curves, to float32 rounding


@pytest.mark.slow
# DenseNet121 stands for DenseNet201: the same dense blocks, concatenations and transitions (keras.applications'
# densenet.py, 6-12-24-16 layers a block against 6-12-48-32), at half the trace; DenseNet201 itself is planned below.
@pytest.mark.parametrize("backbone,size,region", [("vgg16", 40, 6), pytest.param("densenet121", 36, 8, marks=pytest.mark.not_on_jax), pytest.param("resnet50", 36, 8, marks=pytest.mark.not_on_jax), ("mobilenetv2", 40, 8)])
def test_incremental_curves_equal_full_ones_on_keras_backbones(backbone, size, region):
    from xbench.models import build_classifier
    from xbench.pipeline.speed import _unsaturate

    model = build_classifier(backbone, 4, size, weights="none", seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((8, size, size, 3)).astype(np.float32)
    h = rng.random((2, size, size)).astype(np.float32)
    _unsaturate(model, x)  # logits of unit spread over 8 images, so that the curves move
    x = x[:2]
    # Both orders on the two cheap backbones; MoRF alone on DenseNet121 and ResNet50 (the orders differ only in the
    # ranking, which the every-layer-kind graph tests run for morf, lerf and random; each order here is a trace of its own).
    for order in ("morf", "lerf") if backbone in ("vgg16", "mobilenetv2") else ("morf",):
        full, inc = _curves_both(model, x, h, region_size=region, order=order, seed=1, perturbation=Constant(0.0))
        assert full.std() > 1e-3
        # A window's convolutions run another kernel than the whole map's: float32 rounding, amplified by the
        # recentred head (docs/performance.md, "Float32 floor"). Measured worst: 1e-7 on AVX-512 CPUs, 1.1e-5 on ResNet50
        # on an AVX2 EPYC; a wrong window moves a point by the curves' scale (std > 1e-3).
        np.testing.assert_allclose(inc, full, atol=5e-5, rtol=0)
    run = runner(model, size, size, region)
    assert run.p.ends_at in ("head_flatten (Flatten)", "head_gap (GlobalAveragePooling2D)")
    assert (~run.win.full[run.p.stored]).sum() >= 3  # some layers really ran on windows


# --- choice and refusals -------------------------------------------------------------------------

@pytest.mark.not_on_jax  # a FLOP plan, backend-free; building DenseNet201 under JAX costs 45 s of the rerun
def test_auto_takes_incremental_where_it_saves_flops_and_says_so(caplog):
    from xbench.models import build_classifier

    vgg = build_classifier("vgg16", 4, 72, weights="none")
    dense = build_classifier("densenet201", 4, 72, weights="none")
    with caplog.at_level(logging.INFO, logger="xbench.perturbation.engine"):
        take = choose_method("auto", vgg, "morf", GaussianNoise(0.1), 72, 72, 8, 81)
        leave = choose_method("auto", dense, "morf", GaussianNoise(0.1), 72, 72, 8, 81)
    assert take is not None and leave is None
    r_vgg = predicted_speedup(estimate(take.p, take.win, 81), 16)
    r_dense = predicted_speedup(estimate(runner(dense, 72, 72, 8).p, runner(dense, 72, 72, 8).win, 81), 16)
    assert r_vgg >= AUTO_MIN_SPEEDUP > r_dense
    # A step of 4 images is too little work to beat full batches (VGG16 at 64 px, 4 images: measured 0.70x), one of 16 is not (72 px: 1.64x).
    assert choose_method("auto", vgg, "morf", GaussianNoise(0.1), 72, 72, 8, 81, n_images=4) is None
    assert choose_method("auto", vgg, "morf", GaussianNoise(0.1), 72, 72, 8, 81, n_images=16) is not None
    said = [r.getMessage() for r in caplog.records]
    assert any("72x72 images, 8-px regions, 81 steps: incremental (chosen)" in m for m in said), said
    assert any("72x72 images, 8-px regions, 81 steps: full (chosen)" in m for m in said), said
    assert choose_method("full", vgg, "morf", GaussianNoise(0.1), 72, 72, 8, 81) is None


#: docs/performance.md, "auto over a grid" (2-core CPU, one run, best of two): (FLOP ratio, step GFLOP per image,
#: stored MB per image, chunk, full s, incremental s) for VGG16 and DenseNet201 at 64-299 px and 1-64 images.
_AUTO_GRID = [(1.76, 1.357, 4.7, 1, 0.14, 0.26), (1.76, 1.357, 4.7, 4, 0.5, 0.59), (1.76, 1.357, 4.7, 16, 1.97, 1.57),
              (1.76, 1.357, 4.7, 64, 7.78, 5.44), (2.52, 3.599, 19.0, 1, 0.48, 0.64), (2.52, 3.599, 19.0, 4, 2.04, 1.24),
              (2.52, 3.599, 19.0, 16, 7.86, 4.12), (4.45, 5.417, 58.1, 1, 1.56, 0.99), (4.45, 5.417, 58.1, 4, 5.75, 2.03),
              (4.45, 5.417, 58.1, 12, 23.03, 10.95), (5.69, 6.662, 102.5, 1, 2.61, 1.41), (5.69, 6.662, 102.5, 4, 10.16, 2.87),
              (5.69, 6.662, 102.5, 6, 41.14, 13.98), (1.11, 0.624, 3.0, 1, 0.13, 0.62), (1.11, 0.624, 3.0, 4, 0.3, 1.29),
              (1.11, 0.624, 3.0, 16, 1.09, 2.18), (1.11, 0.624, 3.0, 64, 4.32, 5.29), (1.3, 2.119, 11.7, 1, 0.32, 0.93),
              (1.3, 2.119, 11.7, 4, 0.99, 1.98), (1.3, 2.119, 11.7, 16, 4.24, 4.69), (1.39, 6.021, 35.8, 1, 0.84, 1.58),
              (1.39, 6.021, 35.8, 4, 3.49, 3.89), (1.39, 6.021, 35.8, 16, 13.48, 10.74), (1.49, 9.544, 62.8, 1, 1.48, 2.03),
              (1.49, 9.544, 62.8, 4, 5.99, 5.32), (1.49, 9.544, 62.8, 13, 23.72, 27.74)]


@pytest.mark.not_on_jax  # arithmetic on recorded figures: backend-free
def test_auto_takes_the_faster_method_on_every_point_of_the_measured_grid():
    from xbench.perturbation.incremental import Estimate

    for ratio, step, state, chunk, full_s, inc_s in _AUTO_GRID:
        est = Estimate(full_gflop=ratio, incremental_gflop=1.0, step_gflop=step, forward_gflop=1.0, state_mb=state, per_layer=[])
        took = inc_s if predicted_speedup(est, chunk) >= AUTO_MIN_SPEEDUP else full_s
        assert took <= 1.05 * min(full_s, inc_s), (ratio, step, state, chunk)


def test_the_flop_estimate_of_a_full_forward_matches_the_layer_count_by_hand():
    inp = keras.Input((10, 10, 3))
    x = L.Conv2D(4, 3, padding="same")(inp)  # 10*10*3*3*3*4*2 = 21,600
    x = L.MaxPooling2D(2)(x)  # 5*5*4*4 = 400 comparisons
    x = L.Flatten()(x)
    x = L.Dense(2)(x)  # 100*2*2 = 400
    model = keras.Model(inp, L.Softmax()(x))
    p = plan(model)
    est = estimate(p, window_tables(p.nodes, 10, 10, 5), 4)
    assert est.forward_gflop * 1e9 == pytest.approx(21600 + 400 + 400)
    assert est.full_gflop == pytest.approx(5 * est.forward_gflop)


@pytest.mark.parametrize("case", ["deletion", "road", "function"])
def test_incremental_is_refused_in_one_line_where_it_cannot_run(case):
    model = _every_layer_model(16, 16)
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    h = np.random.default_rng(1).random((2, 16, 16)).astype(np.float32)
    kw = dict(region_size=4, method="incremental")
    if case == "deletion":
        kw["order"] = "deletion"
    elif case == "road":
        kw["perturbation"] = Road()
    else:
        model = lambda z: np.full((len(z), 2), 0.5, np.float32)  # noqa: E731
    with pytest.raises(ValueError, match="^method=incremental cannot run here: ") as e:
        perturbation_curves(model, x, h, **kw)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="method must be one of"):
        perturbation_curves(model, x, h, region_size=4, method="fast")


def test_one_model_serves_chunks_of_any_size_in_turn():
    # Scoring calls with chunks of 16 and a short last one, then the sanity check with all images:
    # every chunk size is its own compiled step.
    model = _every_layer_model(16, 16)
    rng = np.random.default_rng(3)
    x = rng.random((6, 16, 16, 3)).astype(np.float32)
    h = rng.random((6, 16, 16)).astype(np.float32)
    for n in (4, 2, 5):  # a chunk, a shorter one, then a longer one than the first: each its own compiled step
        full, inc = _curves_both(model, x[:n], h[:n], region_size=4, max_steps=5, batch_size=n)
        np.testing.assert_allclose(inc, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_low_precision_model_whose_first_layer_is_a_convolution_runs_incrementally(dtype):
    from xbench.models.precision import with_compute_dtype

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu")(inp)  # reads the float32 image directly
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(3, name="logits")(x)
    model = with_compute_dtype(keras.Model(inp, L.Softmax()(x)), dtype)
    rng = np.random.default_rng(0)
    imgs, h = rng.random((2, 16, 16, 3)).astype(np.float32), rng.random((2, 16, 16)).astype(np.float32)
    full, inc = _curves_both(model, imgs, h, region_size=4)
    np.testing.assert_allclose(inc, full, atol=1e-2, rtol=0)  # both in low precision: close, not bitwise


def _heavy_tail_model():
    inp = keras.Input((24, 24, 3))
    x = L.Conv2D(4, 3, padding="same")(inp)
    x = L.SeparableConv2D(64, 3, padding="same", name="sep")(x)  # not windowed: the rest runs in full
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Softmax()(L.Dense(3, name="logits")(x)))


def test_the_chunk_counts_the_activations_after_the_windows_and_the_estimate_their_flops():
    from xbench.perturbation.incremental import chunk_size

    model = _heavy_tail_model()
    run = runner(model, 24, 24, 6)
    assert run.p.ends_at == "sep (SeparableConv2D)"
    sep_bytes = 24 * 24 * 64 * 4
    g = chunk_size(run, 10_000, memory_budget_mb=8)
    assert g * sep_bytes <= 8 * 2**20 and g >= 1
    est = estimate(run.p, run.win, 16)
    by_hand = 2 * 24 * 24 * (3 * 3 * 3 * 4) + 2 * 24 * 24 * (3 * 3 * 4 + 4 * 64) + 2 * 64 * 3
    assert est.forward_gflop * 1e9 == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.torch_rerun
def test_a_layer_called_twice_runs_incrementally():
    keras.utils.set_random_seed(0)
    relu = L.ReLU()
    inp = keras.Input((16, 16, 3))
    x = relu(L.Conv2D(4, 3, padding="same")(inp))
    x = relu(L.Conv2D(4, 3, padding="same")(x))
    x = L.Flatten()(x)
    model = keras.Model(inp, L.Softmax()(L.Dense(3, name="logits")(x)))
    rng = np.random.default_rng(0)
    imgs, h = rng.random((2, 16, 16, 3)).astype(np.float32), rng.random((2, 16, 16)).astype(np.float32)
    full, inc = _curves_both(model, imgs, h, region_size=4)
    assert full.std() > 1e-3
    np.testing.assert_allclose(inc, full, atol=1e-5, rtol=0)
