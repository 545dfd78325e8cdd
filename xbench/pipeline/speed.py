"""Measure the perturbation engine against its ceiling and against the toolkit way (pipeline layer).

Three paths over the same model, images, heatmaps and (image, step) pairs:

- ``raw``: the compiled forward pass over pre-built device batches of the
  engine's batch size, as many as the engine runs: the ceiling;
- ``engine``: :func:`xbench.perturbation.perturbation_curves` end to end;
- ``toolkit_loop``: what metric toolkits do: per step, perturb the whole set
  of images on the host in NumPy and call ``model.predict``.

Every order runs on all three paths: the region orders (morf, lerf, random)
and the pixel orders deletion and insertion (Petsiuk et al. 2018; ``n``
pixels per step, :func:`xbench.perturbation.regions.pixel_rank_maps`).
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from xbench.core.names import LOGITS
from xbench.perturbation.engine import (
    auto_batch_size,
    balanced_batch,
    device_step,
    perturbation_curves,
    step_devices,
)
from xbench.perturbation.orders import order_of
from xbench.perturbation.perturbations import PERTURBATIONS, image_rng
from xbench.perturbation.regions import (
    grid_shape,
    pixel_rank_maps,
    pixel_steps,
    rank_maps,
    region_order,
    region_scores,
    requested_pixel_steps,
)
from xbench.perturbation.spec import CurveSpec


def model_flops(model: keras.Model) -> float:
    """Multiply-adds x 2 of one forward pass of one image (Conv2D, DepthwiseConv2D, Dense)."""
    total = 0.0
    for layer in model.layers:
        try:
            out = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, cin, mult = layer.kernel.shape
            total += 2.0 * out[1] * out[2] * kh * kw * cin * mult
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            total += 2.0 * out[1] * out[2] * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * np.prod(layer.kernel.shape)
    return float(total)


class PeakRSS:
    """Samples this process's resident memory every few ms; ``peak - start`` in bytes."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.start, self.peak = interval, 0, 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())

    @property
    def delta(self) -> int:
        return self.peak - self.start


def toolkit_loop(model, images, heatmaps, *, region_size, order, perturbation, seed, batch_size, targets=None, max_steps=None,
                 pixel_steps=None, insertion_blur=5.0):
    """Per step: change every image's next region (pixel orders: next n pixels) on the host, then ``model.predict`` all images.

    Deletion changes pixels to g(x); insertion starts from ``Blur(insertion_blur)``
    of x and puts x's pixels back, its default target the class of x (the last step).
    ROAD (mask-dependent): every image's removed set is re-imputed per step by
    SciPy's direct sparse solve, as ROAD's own code does, one image at a time.
    """
    n, h, w = images.shape[:3]
    rows, cols = grid_shape(h, w, region_size)
    x = images.astype(np.float32).copy()
    kind = order_of(order)
    change = CurveSpec(order=order, perturbation=perturbation, insertion_blur=insertion_blur).change  # insertion: the blur
    road = change.mask_dependent
    if kind.swaps_slots:  # insertion: from the blur, back to x
        x, g = np.stack([change(images[i], None) for i in range(n)]), x
    else:
        g = np.stack([(change.draws if road else change)(images[i], image_rng(seed, i)) for i in range(n)])
    if kind.pixel:
        ranks, steps, _ = pixel_rank_maps(heatmaps, requested_pixel_steps(h, w, region_size, pixel_steps))
    else:
        ranks = rank_maps(region_order(region_scores(heatmaps, region_size), order, seed=seed, image_ids=np.arange(n)), h, w, region_size)
        steps = rows * cols if max_steps is None else max_steps
    probs = [model.predict(x, batch_size=batch_size, verbose=0)]
    for k in range(steps):
        if road:
            x = np.stack([perturbation.exact(images[i], ranks[i] <= k, g[i]) for i in range(n)])
        else:
            m = ranks == k
            x[m] = g[m]
        probs.append(model.predict(x, batch_size=batch_size, verbose=0))
    p = np.stack(probs, 1)  # (N, steps + 1, C)
    t = p[:, kind.target_step].argmax(1) if targets is None else targets
    return p[np.arange(n), :, t]


def raw_forward(model, n_pairs: int, batch_size: int, image_size: int, slots: int = 2):
    """The compiled step over pre-built device batches: no perturbation, no transfers beyond a few indices.

    ``slots``: image slots per batch; the engine's own (:func:`warm_step`) runs the same compiled step.
    """
    step = device_step(model)
    from keras import ops

    X = ops.convert_to_tensor(np.random.default_rng(0).random((slots, image_size, image_size, 3), dtype=np.float32))
    R = ops.convert_to_tensor(np.random.default_rng(1).random((slots, image_size, image_size, 3), dtype=np.float32))
    RK = ops.convert_to_tensor(np.zeros((slots, image_size, image_size), np.int32))
    idx = ops.convert_to_tensor(np.zeros(batch_size, np.int32))
    k = ops.convert_to_tensor(np.zeros(batch_size, np.int32))
    nb = math.ceil(n_pairs / batch_size)
    out = step(X, R, RK, idx, k)
    _ = np.asarray(out)  # compiled and warm
    t0 = time.perf_counter()
    for _ in range(nb):
        out = step(X, R, RK, idx, k)
    np.asarray(out)
    return time.perf_counter() - t0, nb


def warm_step(model, batch_size: int, curve_points: int, image_size: int) -> None:
    """Run the engine's step once at the shapes ``perturbation_curves`` uses for this (balanced) batch size and curve length.

    Its image slots are ``ceil(B / (K + 1)) + 1`` (:func:`xbench.perturbation.engine.perturbation_curves`);
    on JAX each new shape compiles, which a timed call should not include.
    """
    from keras import ops

    slots = math.ceil(batch_size / curve_points) + 1
    X = ops.convert_to_tensor(np.zeros((slots, image_size, image_size, 3), np.float32))
    RK = ops.convert_to_tensor(np.zeros((slots, image_size, image_size), np.int32))
    ids = ops.convert_to_tensor(np.zeros(batch_size, np.int32))
    np.asarray(device_step(model)(X, X, RK, ids, ids))


def device_memory() -> dict | None:
    """The first device's allocator figures in MiB (``peak_bytes_in_use`` is the process's high-water mark), or None.

    None where the backend keeps no such statistics (TensorFlow and torch here; JAX on a CPU).
    """
    from xbench import backend

    return backend.active().device_memory()


def _unsaturate(model, images) -> None:
    """Scale the logits layer so its outputs have unit spread on these images.

    An untrained He-initialised backbone gives logits in the hundreds, so the
    softmax is saturated, every curve is 1.0 and "equal curves" would prove
    nothing. Scaling the last layer keeps the cost and makes the curves move.
    """
    layer = model.get_layer(LOGITS)
    probe = keras.Model(model.input, layer.output)
    for _ in range(3):  # repeated: vanishing logits (1e-9) need more than one step in float32
        z = np.asarray(probe(images), dtype=np.float64)
        spread = float(z.std(axis=0).mean())
        if spread == 0 or abs(spread - 3.0) < 0.3:
            break
        # Centre each class's logit and scale its spread across images to ~3.
        scale = 3.0 / spread
        layer.kernel.assign((np.asarray(layer.kernel, np.float64) * scale).astype(np.float32))
        layer.bias.assign(((np.asarray(layer.bias, np.float64) - z.mean(axis=0)) * scale).astype(np.float32))


@dataclass
class BenchSettings:
    backbone: str = "vgg16"
    image_size: int = 64
    n: int = 64
    region_size: int = 8
    order: str = "morf"
    perturbation: str = "gaussian"
    batch_size: int | None = None
    dtype: str = "float32"
    toolkit: bool = True
    seed: int = 0
    max_steps: int | None = None
    repeats: int = 1  # raw and engine alternate this many times; the best time of each counts
    pixel_steps: int | None = None  # deletion / insertion: steps requested (None: as many as regions)
    insertion_blur: float = 5.0  # insertion: sigma (px) of the blurred start
    method: str = "full"  # the engine's method (score.method): full | incremental | auto


@dataclass
class _Case:
    """One bench run's inputs, built once: the models, images, maps, steps, batch and the engine's keyword arguments."""

    s: BenchSettings
    model32: object
    model: object  # model32 computing in s.dtype
    images: np.ndarray
    heat: np.ndarray
    regions: int
    steps: int  # L: region steps, or pixel steps K_eff
    pairs: int  # N (L + 1) forward passes
    batch: int  # B, what the engine uses
    devices: int
    perturbation: object
    kw: dict  # the full engine's keyword arguments
    ikw: dict  # the chosen method's
    inc: dict  # what the incremental method would do (empty for method=full)


def _case(s: BenchSettings, model=None) -> _Case:
    from xbench.models import build_classifier
    from xbench.models.backbones import NO_WEIGHTS
    from xbench.models.precision import check_compute_dtype, with_compute_dtype

    check_compute_dtype(s.dtype)
    model32 = model or build_classifier(s.backbone, 4, s.image_size, weights=NO_WEIGHTS, seed=s.seed)
    rng = np.random.default_rng(s.seed)
    images = rng.random((s.n, s.image_size, s.image_size, 3), dtype=np.float32)
    heat = rng.random((s.n, s.image_size, s.image_size), dtype=np.float32)
    rows, cols = grid_shape(s.image_size, s.image_size, s.region_size)
    L = rows * cols if s.max_steps is None else min(s.max_steps, rows * cols)
    if order_of(s.order).pixel:  # steps of n pixels, always to 100% (max_steps does not apply)
        L = pixel_steps(s.image_size, s.image_size, requested_pixel_steps(s.image_size, s.image_size, s.region_size, s.pixel_steps))[1]
    pairs = s.n * (L + 1)
    _unsaturate(model32, images[:16])
    model_ = with_compute_dtype(model32, s.dtype)
    d = step_devices(model_)
    B = math.ceil(balanced_batch(pairs, s.batch_size or auto_batch_size(model_, 1024)) / d) * d  # what the engine will use
    pert = PERTURBATIONS[s.perturbation]()
    kw = dict(region_size=s.region_size, order=s.order, perturbation=pert, seed=s.seed, batch_size=B, max_steps=s.max_steps,
              pixel_steps=s.pixel_steps, insertion_blur=s.insertion_blur, method="full")
    inc = _incremental_facts(model_, s, pert, L) if s.method != "full" else {}
    # incremental chunks by the memory budget, as scoring does; auto that runs full, by the same batches as full
    ikw = {**kw, "method": s.method, "batch_size": None if inc.get("method_used") == "incremental" else B}
    return _Case(s, model32, model_, images, heat, rows * cols, L, pairs, B, d, pert, kw, ikw, inc)


def _warm(c: _Case) -> None:
    """Compile every path so that timings are steady state. On JAX every new shape compiles: the full engine (and raw)
    are warmed at the (slots, batch) shapes of the timed call, predict on all images."""
    if c.perturbation.mask_dependent:
        perturbation_curves(c.model, c.images[:2], c.heat[:2], **c.kw)
    else:
        warm_step(c.model, c.batch, c.steps + 1, c.s.image_size)
    if c.inc.get("method_used") == "incremental":  # the incremental step compiles per chunk size: warm it on a full chunk
        warm = c.inc.get("chunk_images", 2)
        perturbation_curves(c.model, c.images[:warm], c.heat[:warm], **c.ikw)
    if c.s.toolkit:
        c.model.predict(c.images, batch_size=c.batch, verbose=0)


def _timed(c: _Case) -> dict:
    """raw, the engine (the chosen method) and, unless full, the full engine, interleaved ``repeats`` times (drift on a
    shared machine hits all); the best time of each counts."""
    t = {"raw": [], "engine": [], "full": [], "rss": [], "nb": 0, "curves": None, "full_curves": None}
    for _ in range(max(1, c.s.repeats)):
        raw_s, t["nb"] = raw_forward(c.model, c.pairs, c.batch, c.s.image_size, slots=math.ceil(c.batch / (c.steps + 1)) + 1)
        t["raw"].append(raw_s)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            t["curves"] = perturbation_curves(c.model, c.images, c.heat, **(c.ikw if c.s.method != "full" else c.kw))
            t["engine"].append(time.perf_counter() - t0)
        t["rss"].append(mem.delta)
        if c.s.method != "full":
            t0 = time.perf_counter()
            t["full_curves"] = perturbation_curves(c.model, c.images, c.heat, **c.kw)
            t["full"].append(time.perf_counter() - t0)
    return t


def run_bench(s: BenchSettings, model=None) -> dict:
    """Time raw / engine / toolkit_loop on one model; returns a JSON-ready dict and the engine's curves.

    With ``s.dtype`` other than float32, every path runs a copy of the float32
    model computing in that type (:func:`xbench.models.precision.with_compute_dtype`,
    what ``score.dtype`` does), and the curves are compared with the float32
    model's on the same images and maps.
    """
    c = _case(s, model)
    _warm(c)
    t = _timed(c)
    raw_s, engine_s, nb, B, pairs, flops = min(t["raw"]), min(t["engine"]), t["nb"], c.batch, c.pairs, model_flops(c.model)
    curves = t["curves"]
    out = {
        "backbone": s.backbone, "image_size": s.image_size, "n": s.n, "region_size": s.region_size, "regions": c.regions, "steps": c.steps,
        "order": s.order, "perturbation": s.perturbation, "dtype": s.dtype, "batch_size": B, "forward_passes": pairs,
        "keras_backend": keras.backend.backend(), "devices": c.devices, "gflop_per_image": flops / 1e9,
        "raw_s": raw_s, "engine_s": engine_s,
        "raw_images_per_s": nb * B / raw_s, "engine_images_per_s": pairs / engine_s,
        "engine_over_raw": (nb * B / raw_s and (pairs / engine_s) / (nb * B / raw_s)),
        "engine_tflops": pairs * flops / engine_s / 1e12, "raw_tflops": nb * B * flops / raw_s / 1e12,
        "engine_peak_rss_delta_mb": max(t["rss"]) / 2**20,
        "repeats": len(t["raw"]), "raw_times_s": t["raw"], "engine_times_s": t["engine"],
        "inputs_mb": (c.images.nbytes + c.heat.nbytes) / 2**20, "method": s.method,
    }
    if s.method != "full":
        full_s = min(t["full"])
        out.update(c.inc)
        out.update({"full_engine_s": full_s, "full_engine_times_s": t["full"], "engine_over_full": full_s / engine_s,
                    "max_abs_diff_vs_full": float(np.abs(curves - t["full_curves"]).max())})
    if c.perturbation.mask_dependent and order_of(s.order).uses_perturbation:  # insertion ignores it: a blur
        out.update(_versus_gaussian(c, engine_s))
    if s.toolkit:
        out.update(_versus_toolkit(c, engine_s, curves, t["full_curves"]))
    if s.dtype != "float32":
        out.update(_versus_float32(c, curves))
    out["curves_mean"] = float(curves.mean())
    out["curves_std"] = float(curves.std())
    return out, curves


def _versus_gaussian(c: _Case, engine_s: float) -> dict:
    """What in-distribution removal (ROAD) costs over the paper's noise: the same run with Gaussian noise."""
    from xbench.perturbation.perturbations import GaussianNoise

    gkw = {**c.kw, "perturbation": GaussianNoise(0.1)}
    perturbation_curves(c.model, c.images[:2], c.heat[:2], **gkw)
    t0 = time.perf_counter()
    perturbation_curves(c.model, c.images, c.heat, **gkw)
    g = time.perf_counter() - t0
    return {"gaussian_engine_s": g, "engine_over_gaussian": g / engine_s}


def _versus_toolkit(c: _Case, engine_s: float, curves: np.ndarray, full_curves: np.ndarray | None) -> dict:
    """The toolkit loop's time and its largest curve difference from the engine (and from the full engine, unless full ran)."""
    s = c.s
    t0 = time.perf_counter()
    tk = toolkit_loop(c.model, c.images, c.heat, region_size=s.region_size, order=s.order, perturbation=c.perturbation, seed=s.seed,
                      batch_size=c.batch, max_steps=s.max_steps, pixel_steps=s.pixel_steps, insertion_blur=s.insertion_blur)
    toolkit_s = time.perf_counter() - t0
    out = {"toolkit_s": toolkit_s, "toolkit_images_per_s": c.pairs / toolkit_s, "engine_over_toolkit": toolkit_s / engine_s,
           "max_abs_diff_engine_toolkit": float(np.abs(tk - curves).max())}
    if s.method != "full":  # the full engine's too: the incremental one may differ from both by float32 rounding
        out["max_abs_diff_full_engine_toolkit"] = float(np.abs(tk - full_curves).max())
    return out


def _versus_float32(c: _Case, curves: np.ndarray) -> dict:
    """How far the low-precision curves and AOPCs lie from the float32 model's on the same images and maps."""
    from xbench.metrics.aopc import aopc_per_image

    ref = perturbation_curves(c.model32, c.images, c.heat, **c.kw)
    return {"max_abs_diff_vs_float32": float(np.abs(curves - ref).max()),
            "mean_abs_diff_vs_float32": float(np.abs(curves - ref).mean()),
            "max_abs_aopc_diff_vs_float32": float(np.abs(aopc_per_image(curves) - aopc_per_image(ref)).max()),
            "mean_aopc_diff_vs_float32": float((aopc_per_image(curves) - aopc_per_image(ref)).mean())}


def _incremental_facts(model, s: BenchSettings, pert, steps: int) -> dict:
    """What the incremental method would do here: the method auto picks, the FLOP estimate, chunk and state sizes."""
    from xbench.perturbation.engine import choose_method
    from xbench.perturbation.incremental import (
        chunk_size,
        estimate,
        predicted_speedup,
        runner,
    )

    used = "incremental" if choose_method(s.method, model, s.order, pert, s.image_size, s.image_size, s.region_size, steps, s.n) else "full"
    try:
        run = runner(model, s.image_size, s.image_size, s.region_size)
    except ValueError as exc:  # auto on a model incremental cannot read: nothing more to say
        return {"method_used": used, "incremental_refused": str(exc)}
    est = estimate(run.p, run.win, steps)
    chunk = chunk_size(run, s.n, 1024)
    return {"method_used": used, "gflop_full": est.full_gflop, "gflop_incremental": est.incremental_gflop, "flop_ratio": est.ratio,
            "predicted_speedup": predicted_speedup(est, chunk), "chunk_images": chunk, "state_mb_per_image": est.state_mb, "windows_end_at": run.p.ends_at,
            "per_layer_gflop": [list(r) for r in est.per_layer]}


def matmul_peak(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """Achieved matrix-product TFLOP/s in ``dtype`` (float32, bfloat16) with the active Keras backend on this machine.

    Each product is read back as its sum (one number), so an accelerator's timing is not a copy of the matrix to the host.
    """
    from keras import ops

    a = ops.cast(ops.convert_to_tensor(np.random.default_rng(0).random((n, n), dtype=np.float32)), dtype)
    b = ops.cast(ops.convert_to_tensor(np.random.default_rng(1).random((n, n), dtype=np.float32)), dtype)
    float(ops.sum(ops.matmul(a, b)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        float(ops.sum(ops.matmul(a, b)))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def memory_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Host memory copy bandwidth in GB/s (read + write counted)."""
    a = np.ones(mb * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9


def training_speed(backbone: str = "vgg16", image_size: int = 64, n: int = 256, epochs: int = 4, seed: int = 0) -> dict:
    """Seconds per epoch with a frozen backbone: head on cached features vs a plain fit over images.

    Epochs after the first are compared (the first includes tracing); the
    one-off feature extraction is reported separately. ``*_wall_epoch_s``
    adds each epoch's ``fit`` start-up (median over the later epochs) and,
    for ``features_checkpointed``, the mean checkpoint write that lets a
    killed job resume.
    """
    from xbench.models import build_classifier
    from xbench.models.backbones import NO_WEIGHTS
    from xbench.pipeline.store.checkpoints import TrainCheckpoint
    from xbench.pipeline.training import TrainSettings, train_classifier

    rng = np.random.default_rng(seed)
    images = (rng.random((n, image_size, image_size, 3)) * 255).astype(np.uint8)
    labels = rng.integers(0, 4, n)
    split = np.where(np.arange(n) % 5 == 0, "val", "train")
    names = ["a", "b", "c", "d"]
    out = {"backbone": backbone, "image_size": image_size, "n_train": int((split == "train").sum()), "epochs": epochs}
    with tempfile.TemporaryDirectory() as tmp:
        for key, cached, checkpoint in (("features", True, None), ("plain", False, None),
                                        ("features_checkpointed", True, TrainCheckpoint(Path(tmp) / "ckpt"))):
            model = build_classifier(backbone, 4, image_size, weights=NO_WEIGHTS, seed=seed)
            r = train_classifier(model, images, labels, split, names, names[1:], TrainSettings(epochs=epochs, feature_cache=cached), seed,
                                 checkpoint=checkpoint)
            out[f"{key}_epoch_s"] = float(r.history["seconds"].iloc[1:].median())  # inside fit, epochs after the first
            out[f"{key}_first_epoch_s"] = float(r.history["seconds"].iloc[0])
            # Per epoch with fit's start-up (one fit call per epoch), and the checkpoint write.
            out[f"{key}_wall_epoch_s"] = float(r.history["fit_seconds"].iloc[1:].median()) + r.timings["stage1_checkpoint_s"] / epochs
            out[f"{key}_val_loss"] = [float(v) for v in r.history["val_loss"]]  # the paths must train the same head
            if cached and checkpoint is None:
                out["feature_extraction_s"] = r.timings["features_s"]
    out["epoch_speedup"] = out["plain_epoch_s"] / out["features_epoch_s"]
    return out


def phantom_images(n: int, size: int, seed: int = 0, difficulty: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 3) uint8 phantoms (the four classes in turn, gray repeated to 3 channels, as the loader gives them) and their (N,) labels."""
    from xbench.data.phantoms import RADIOGRAPHY_CLASSES, make_phantom

    labels = np.arange(n) % len(RADIOGRAPHY_CLASSES)
    gray = np.stack([make_phantom(RADIOGRAPHY_CLASSES[c], i // len(RADIOGRAPHY_CLASSES), seed=seed, size=size, difficulty=difficulty).image
                     for i, c in enumerate(labels)]) if n else np.zeros((0, size, size), np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), labels


def leakage_perturbations() -> dict:
    """What ``xbench-bench --leakage`` compares: ROAD, a black fill, the paper's noise, and ``identity`` (noise of std 0: nothing changes, the chance floor)."""
    from xbench.perturbation.perturbations import Constant, GaussianNoise, Road

    return {"road": Road(), "constant": Constant(0.0), "gaussian": GaussianNoise(0.1), "identity": GaussianNoise(0.0)}


def leakage_bench(image_size: int = 64, n: int = 128, region_size: int = 8, seed: int = 0, epochs: int = 50, perturbations: dict | None = None) -> dict:
    """ROAD's mask-leakage check (:func:`xbench.pipeline.leakage.mask_leakage`) on ``n`` phantoms; a JSON-ready dict."""
    from xbench.pipeline.leakage import mask_leakage

    t0 = time.perf_counter()
    images, _ = phantom_images(n, image_size, seed=seed)
    res = mask_leakage(images, perturbations or leakage_perturbations(), region_size=region_size, seed=seed, epochs=epochs)
    return {"keras_backend": keras.backend.backend(), "image_size": image_size, "n": n, "region_size": region_size, "seed": seed, "epochs": epochs,
            "results": {k: v.as_dict() for k, v in res.items()}, "total_s": time.perf_counter() - t0}


#: The explainers ``xbench-bench --explainers all`` times (controls and references cost nothing).
SPEED_EXPLAINERS = ("gradcam", "gradcampp", "layercam", "hirescam", "xgradcam", "eigencam", "saliency", "smoothgrad", "vargrad",
                    "input_x_gradient", "integrated_gradients", "deeplift", "lrp", "guided_backprop")


def explainer_speed(backbone: str, image_size: int, n: int, names, seed: int = 0, tfkv: bool = True) -> list[dict]:
    """Maps per second of each explainer on an untrained ``backbone`` at ``image_size`` px, ``n`` random images (3 classes).

    Each explainer is called twice on the same images: ``first_s`` includes
    its traces and compilation, ``maps_per_s`` = n / the second call's wall
    time (steady state). With ``tfkv`` on TensorFlow the tf-keras-vis
    implementation of the methods it has is timed the same way
    (``impl=tfkv``) and ``native_over_tfkv`` is the ratio of maps per second.
    Default settings of every explainer (SmoothGrad, VarGrad: 20 samples;
    Integrated Gradients: 50 steps).
    """
    from xbench.core.names import TFKV_METHODS
    from xbench.explain import ExplainContext, build
    from xbench.models import build_classifier
    from xbench.models.backbones import NO_WEIGHTS

    model = build_classifier(backbone, 3, image_size, weights=NO_WEIGHTS, seed=seed)
    x = np.random.default_rng(seed).random((n, image_size, image_size, 3)).astype(np.float32)
    t = np.arange(n) % 3
    ctx = ExplainContext.default(n, seed=seed)
    rows = []

    def timed(name, impl=None):
        explainer = build(name, **({"impl": impl} if impl else {}))
        t0 = time.perf_counter()
        explainer(model, x, t, ctx)
        t1 = time.perf_counter()
        explainer(model, x, t, ctx)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    for name in names:
        first, steady = timed(name)
        row = {"explainer": name, "backbone": backbone, "image_size": image_size, "n": n, "keras_backend": keras.backend.backend(),
               "first_s": first, "maps_per_s": n / steady}
        if tfkv and keras.backend.backend() == "tensorflow" and name in TFKV_METHODS:
            tf_first, tf_steady = timed(name, "tfkv")
            row.update(tfkv_first_s=tf_first, tfkv_maps_per_s=n / tf_steady, native_over_tfkv=tf_steady / steady)
        rows.append(row)
    return rows


#: What ``xbench-bench --masked all`` times, with settings small enough for a CPU (RISE: 500 masks; Monotonicity correlation: 10 samples).
MASKED_SETTINGS = {
    "occlusion": {"patch_size": 8, "stride": 4, "method": "full"},
    "occlusion_incremental": {"patch_size": 8, "stride": 8, "method": "incremental"},
    "occlusion_tiled_full": {"patch_size": 8, "stride": 8, "method": "full"},
    "rise": {"masks": 500},
    "scorecam": {},
    "faithfulness_correlation": {},
    "faithfulness_estimate": {},
    "monotonicity_arya": {},
    "monotonicity_nguyen": {"samples": 10},
    "irof": {},
    "sensitivity_n": {},
    "selectivity": {},
    "average_drop": {},
    "mufidelity": {},
}


def _raw_passes_per_s(model, batch_size: int, image_size: int, repeats: int = 3) -> float:
    """Forward passes per second of the compiled model on one pre-built device batch of ``batch_size`` images: the ceiling (best of ``repeats``)."""
    from xbench import backend

    fwd = backend.active().compile_forward(model)
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).random((batch_size, image_size, image_size, 3), dtype=np.float32))
    np.asarray(fwd(x))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            out = fwd(x)
        np.asarray(out)
        best = min(best, (time.perf_counter() - t0) / 4)
    return batch_size / best


def masked_speed(backbone: str, image_size: int, n: int, names, batch_size: int = 64, seed: int = 0, patch: int | None = None) -> list[dict]:
    """Each perturbation explainer and faithfulness metric against the raw forward-pass ceiling for its number of passes.

    On an untrained ``backbone`` (3 classes), ``n`` chest phantoms and random
    maps; every one runs ``batch_size`` (image, pass) pairs per forward pass
    and is called twice (``first_s``: with its compilation; ``seconds``: the
    second call). ``over_raw`` = (its passes / the ceiling's passes per
    second at that batch size) / seconds: 1.0 is the raw inference ceiling.
    ``occlusion_incremental`` (stride = patch) is also reported against
    ``occlusion_tiled_full``, the same windows recomputed in full.
    ``patch``: the occlusion window (default 8 px; the sliding one steps half of it).
    """
    from xbench.explain import ExplainContext, build
    from xbench.explain.cam import default_layer
    from xbench.metrics.faithfulness import METRICS, Inputs
    from xbench.metrics.registry import metric
    from xbench.models import build_classifier
    from xbench.models.backbones import NO_WEIGHTS
    from xbench.perturbation.programs import Windows

    model = build_classifier(backbone, 3, image_size, weights=NO_WEIGHTS, seed=seed)
    rng = np.random.default_rng(seed)
    x = phantom_images(n, image_size, seed)[0].astype(np.float32) / 255.0  # chest phantoms: SLIC finds IROF's superpixels in them, not in noise
    _unsaturate(model, x)  # an untrained net's softmax is saturated; the cost is the same, the figures move
    maps = rng.normal(size=(n, image_size, image_size))
    t = np.arange(n) % 3
    ctx = ExplainContext.default(n, seed=seed)
    ceiling = _raw_passes_per_s(model, batch_size, image_size)
    rows, seconds = [], {}
    for name in names:
        params = dict(MASKED_SETTINGS.get(name, {}))
        if name.startswith("occlusion") and patch:
            params.update(patch_size=patch, stride=patch if params["stride"] == params["patch_size"] else max(1, patch // 2))
        if name in METRICS:
            m = metric(name, **params)
            passes = m.program(Inputs(x, maps, np.arange(n), seed)).passes()
            call = lambda m=m: m(model, x, maps, t, batch_size=batch_size, seed=seed)
        else:
            explainer = build(name.split("_")[0] if name.startswith("occlusion") else name, batch_size=batch_size, **params)
            if name.startswith("occlusion"):
                passes = Windows(image_size, image_size, params["patch_size"], params["stride"], 0.5).passes()
            elif name == "rise":
                passes = params["masks"]
            else:
                passes = int(model.get_layer(default_layer(model)).output.shape[-1])
            call = lambda e=explainer: e(model, x, t, ctx)
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        call()
        seconds[name] = t2 = time.perf_counter() - t1
        total = n * passes
        rows.append({"name": name, "backbone": backbone, "image_size": image_size, "n": n, "keras_backend": keras.backend.backend(), "passes": total,
                     "batch_size": batch_size, "first_s": t1 - t0, "seconds": t2, "passes_per_s": total / t2, "raw_passes_per_s": ceiling,
                     "over_raw": total / ceiling / t2})
    if "occlusion_incremental" in seconds and "occlusion_tiled_full" in seconds:
        for r in rows:
            if r["name"] == "occlusion_incremental":
                r["over_full"] = seconds["occlusion_tiled_full"] / seconds["occlusion_incremental"]
    return rows
