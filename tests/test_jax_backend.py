"""The JAX backend end to end, on a machine where TensorFlow cannot be imported, and TF vs JAX on the same weights.

A GPU box may have JAX and no TensorFlow. Keras imports TensorFlow
opportunistically when it is installed (its serialisation checks for
``tf.TensorShape``), so the job runs here behind an import blocker that makes
``tensorflow`` (and tf-keras-vis) unimportable, as on such a box.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import jax_env

pytest.importorskip("jax")
pytestmark = [pytest.mark.slow, pytest.mark.heavy]

#: What test_the_engine_explainer_and_aopc_tests_pass_on_jax reruns, and how many tests that is.
JAX_RERUN_MARKS = "jax_rerun and not not_on_jax and not tensorflow and not slow"
JAX_RERUN_COUNT = 189

#: Runs before xbench in the child: TensorFlow does not exist there.
BLOCK_TF = textwrap.dedent("""
    import sys
    class _NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "tf_keras_vis", "tensorboard"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: a JAX-only machine)")
            return None
    sys.meta_path.insert(0, _NoTensorFlow())
""")


def test_tf_and_jax_give_the_same_curves_and_grad_cam_on_the_same_weights(tmp_path):
    """One trained-looking model saved under TensorFlow, explained and scored by both backends."""
    import keras

    from xbench.explain.cam import gradcam
    from xbench.models import build_classifier
    from xbench.perturbation import GaussianNoise, perturbation_curves
    from xbench.pipeline.speed import _unsaturate

    assert keras.backend.backend() == "tensorflow"  # this process is the TensorFlow side
    model = build_classifier("vgg16", 4, 32, weights="none", seed=3)
    rng = np.random.default_rng(0)
    x = rng.random((6, 32, 32, 3)).astype(np.float32)
    _unsaturate(model, x)  # an untrained backbone's logits are in the hundreds: every curve would be 1.0
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)

    def compute():
        import keras

        m = keras.models.load_model(tmp_path / "m.keras")
        maps = gradcam(m, x)
        curves = {o: perturbation_curves(m, x, maps, region_size=8, order=o, perturbation=GaussianNoise(0.1), seed=5, image_ids=np.arange(6))
                  for o in ("morf", "lerf")}
        return maps, curves

    tf_maps, tf_curves = compute()
    assert all(np.ptp(c) > 0.05 for c in tf_curves.values()) and np.abs(tf_maps).max() > 0  # the curves move: equality means something
    # JAX scores TensorFlow's maps: its own agree to 1e-5 of their maximum, and a near-tie of two regions would order
    # them differently and move a curve point by the curve's own scale (the maps are compared on their own below).
    np.save(tmp_path / "tf_maps.npy", tf_maps)
    script = BLOCK_TF + textwrap.dedent(f"""
        import numpy as np, keras
        import xbench.models.card, xbench.models.preprocess  # register xbench's layers for loading
        from xbench.explain.cam import gradcam
        from xbench.perturbation import GaussianNoise, perturbation_curves
        x = np.load({str(tmp_path / 'x.npy')!r})
        m = keras.models.load_model({str(tmp_path / 'm.keras')!r})
        maps = gradcam(m, x)
        out = {{"maps": maps}}
        tf_maps = np.load({str(tmp_path / 'tf_maps.npy')!r})
        for o in ("morf", "lerf"):
            out[o] = perturbation_curves(m, x, tf_maps, region_size=8, order=o, perturbation=GaussianNoise(0.1), seed=5, image_ids=np.arange(6))
        np.savez({str(tmp_path / 'jax.npz')!r}, **out)
    """)
    # Scores 6 images' curves on VGG16: compute-bound, so XLA's default level (tests/helpers.jax_env).
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=jax_env(tmp_path / "cache", fast_compile=False), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-1500:]
    jx = np.load(tmp_path / "jax.npz")
    # The tolerances docs/robustness.md states. Measured worst on this model: curves 1.4e-4 (AVX-512 CPU, each
    # backend ranking by its own maps), 3.4e-5 (AVX2 EPYC, both ranking by TensorFlow's). Its raw logits
    # are in the hundreds and _unsaturate recentres them to a spread of 3, so float32 rounding of sums
    # that size (oneDNN vs XLA order them differently) shows at 1e-5 to 1e-4 in the probabilities.
    np.testing.assert_allclose(jx["maps"], tf_maps, atol=1e-5 * max(1.0, float(np.abs(tf_maps).max())), rtol=1e-4)
    for o in ("morf", "lerf"):
        np.testing.assert_allclose(jx[o], tf_curves[o], atol=5e-4, rtol=0)
    worst = max(float(np.abs(jx[o] - tf_curves[o]).max()) for o in ("morf", "lerf"))
    print(f"TF vs JAX: curves differ by at most {worst:.2e}, Grad-CAM maps by {float(np.abs(jx['maps'] - tf_maps).max()):.2e} "
          f"(map max {float(np.abs(tf_maps).max()):.3g})")


def test_the_engine_explainer_and_aopc_tests_pass_on_jax():
    """The backend-sensitive kernel tests again, under JAX: engine vs the slow per-step loop, incremental vs full curves, regions, perturbations, AOPC,
    Grad-CAM by hand, targets and block outputs, a user's model read as a classifier (the tf-keras-vis comparisons need
    TensorFlow: marked and left out)."""
    env = jax_env(Path(os.environ.get("XBENCH_CACHE", "/tmp")) / "jax-kernels")
    probe = subprocess.run([sys.executable, "-c", "import keras; print(keras.backend.backend())"], env=env, capture_output=True, text=True, timeout=300)
    assert probe.stdout.strip() == "jax"  # tests/conftest.py only sets the backend where none is given
    # The set is the modules that carry the jax_rerun marker, less not_on_jax (DenseNet's and ResNet's traces cost a
    # minute each; other cases repeat a smaller one's code path), and it is counted, so it cannot shrink unseen.
    here = Path(__file__).resolve().parent
    modules = sorted(str(f.relative_to(here.parent)) for f in here.rglob("test_*.py") if "\npytestmark = pytest.mark.jax_rerun\n" in f.read_text())
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *modules, "-m", JAX_RERUN_MARKS],
                       cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:]
    summary = r.stdout.strip().splitlines()[-1]  # "128 passed, 373 deselected in 95.20s"
    passed = re.search(r"\b(\d+) passed\b", summary)
    assert passed and "skipped" not in summary and "failed" not in summary and "error" not in summary, r.stdout[-3000:]
    assert int(passed.group(1)) == JAX_RERUN_COUNT, f"{passed.group(1)} tests ran under JAX, {JAX_RERUN_COUNT} expected: update JAX_RERUN_COUNT only for tests added or removed on purpose"


def test_the_engine_splits_its_batches_over_two_jax_devices_with_identical_curves(tmp_path):
    # Two host "devices" stand in for two GPUs: every batch's pairs are split
    # between them (jax.sharding), and the curves must not change beyond float32 rounding.
    script = """
import sys, numpy as np, jax, keras
from xbench.perturbation.engine import perturbation_curves, step_devices
keras.utils.set_random_seed(0)  # a small CNN: the sharding, not the backbone, is under test (VGG16's compile cost 2 x 20 s)
inp = keras.Input((32, 32, 3))
z = keras.layers.Conv2D(8, 3, activation="relu")(inp)
z = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(z)
z = keras.layers.Dense(4, name="logits")(keras.layers.Flatten()(z))
m = keras.Model(inp, keras.layers.Softmax()(z))
rng = np.random.default_rng(0)
x = rng.random((5, 32, 32, 3), dtype=np.float32); h = rng.random((5, 32, 32), dtype=np.float32)
c = perturbation_curves(m, x, h, region_size=8, batch_size=9)  # 9 pairs: padded to 10 on two devices
np.save(sys.argv[1], c)
print(len(jax.local_devices()), step_devices(m))
"""
    out = {}
    for count in (1, 2):
        # A cache (and so a compilation cache) per device count: each compiles its own programs.
        env = jax_env(tmp_path / f"cache-{count}", xla_flags=f"--xla_force_host_platform_device_count={count}")
        r = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"c{count}.npy")], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.split()[-2:] == [str(count), str(count)]  # devices seen, devices the engine split over
        out[count] = np.load(tmp_path / f"c{count}.npy")
    assert out[1].std() > 1e-3  # the curves move, so their equality means something
    # Bit-identical on the AVX-512 CPUs this was written on; on an AVX2 EPYC, XLA:CPU rounds one of 85 points 3e-8
    # (1 ulp) apart, as an image's output depends on the size of the batch it is computed in (5 rows per device,
    # not 10). A pair on the wrong device or step would move a point by the curves' own scale (std > 1e-3).
    np.testing.assert_allclose(out[2], out[1], rtol=0, atol=1e-6)


def test_on_jax_tensorflows_start_up_lines_stay_off_the_console_when_keras_imports_it(tmp_path):
    # keras.utils.set_random_seed imports TensorFlow whenever it is installed, whatever the backend;
    # start_backend imports it under the capture, so nothing of it reaches stderr mid-job.
    script = textwrap.dedent("""
        import sys
        from xbench.backend.native_logs import start_backend
        start_backend()
        import keras
        keras.utils.set_random_seed(0)
        print("TF_LOADED", "tensorflow" in sys.modules, keras.backend.backend())
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=jax_env(tmp_path / "cache"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "jax"
    assert r.stderr == ""


def test_a_saturated_softmax_still_trains_on_jax(tmp_path):
    # He-initialised backbones give logits hundreds apart: the softmax saturates, and cross-entropy
    # from clipped probabilities has no gradient. Training must compute it from the logits (as
    # Keras's TF backend does by itself), or the model never leaves its first prediction.
    script = textwrap.dedent("""
        import numpy as np
        from xbench.models import build_classifier
        from xbench.pipeline.training import TrainSettings, train_classifier
        rng = np.random.default_rng(0)
        labels = np.arange(64) % 2
        images = (rng.random((64, 32, 32, 3)) * 60 + labels[:, None, None, None] * 120).astype(np.uint8)
        split = np.where(np.arange(64) % 4 == 0, "val", "train")
        model = build_classifier("vgg16", 2, 32, weights="none", seed=0, head="pediatric", dense_units=[])
        k = model.get_layer("logits").kernel
        k.assign(np.asarray(k) * 1e4)  # logits thousands apart: saturated
        r = train_classifier(model, images, labels, split, ["a", "b"], ["b"], TrainSettings(epochs=3, lr=1e-2), seed=0)
        print("LOSS", *r.history["loss"].round(6))
    """)
    # Trains VGG16 for 3 epochs: compute-bound, so XLA's default level (tests/helpers.jax_env).
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=jax_env(tmp_path / "cache", fast_compile=False), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    loss = [float(v) for v in r.stdout.split("LOSS")[-1].split()]
    assert len(loss) == 3 and loss[-1] < loss[0], loss
