"""Bring your own model and data: any Keras classifier through the Python API, and model=file / data=folder from the command line."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.helpers import refusal, xbench
from tests.references import readme_classifier, slow_curves
from xbench.explain import TfKerasVis, gradcam
from xbench.models.adapt import AdaptError, adapted, as_classifier
from xbench.models.card import model_card
from xbench.perturbation import GaussianNoise, perturbation_curves

#: Backend-sensitive kernel tests: tests/test_jax_backend.py reruns them under JAX.
pytestmark = pytest.mark.jax_rerun


S = 32
README = Path(__file__).resolve().parents[1] / "README.md"


def _images(n=4, size=S, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
    return x


def functional_softmax(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((S, S, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="pred")(x), name="fsoft")


def applications_model():
    keras.utils.set_random_seed(1)
    return keras.applications.MobileNetV2(input_shape=(S, S, 3), alpha=0.35, include_top=True, weights=None, classes=3)


def sequential_nested():
    keras.utils.set_random_seed(2)
    base = keras.Sequential([keras.Input((S, S, 3)), keras.layers.Conv2D(6, 3, activation="relu", name="s1"),
                             keras.layers.BatchNormalization(name="bn"), keras.layers.Conv2D(8, 3, name="s2")], name="base")
    return keras.Sequential([base, keras.layers.Activation("relu", name="s2_relu"), keras.layers.GlobalMaxPooling2D(name="gmp"),
                             keras.layers.Dense(4, name="dense"), keras.layers.Softmax(name="soft")], name="seq")


def functional_sigmoid():
    keras.utils.set_random_seed(3)
    inp = keras.Input((S, S, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="c2")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="pneumonia")(x), name="fsig")


class Subclassed(keras.Model):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.conv = keras.layers.Conv2D(6, 3, activation="relu", name="sc1")
        self.conv2 = keras.layers.Conv2D(8, 3, activation="relu", name="sc2")
        self.pool = keras.layers.GlobalAveragePooling2D(name="sgap")
        self.out = keras.layers.Dense(3, activation="softmax", name="sout")

    def call(self, x):
        return self.out(self.pool(self.conv2(self.conv(x))))


def subclassed():
    keras.utils.set_random_seed(4)
    m = Subclassed(name="sub")
    m(_images(1))
    return m


def _functional_twin(m):
    """tf-keras-vis needs a functional graph: the subclassed model's own layers, chained."""
    inp = keras.Input((S, S, 3))
    return keras.Model(inp, m.out(m.pool(m.conv2(m.conv(inp)))))


def _saved(make, suffix, tmp_path):
    path = tmp_path / f"model{suffix}"
    make().save(path)
    return lambda: keras.saving.load_model(path, safe_mode=True)


def _tfkv_gradcam(model, images, targets, layer, binary=False):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import BinaryScore, CategoricalScore

    score = BinaryScore(targets.tolist()) if binary else CategoricalScore(targets.tolist())
    return Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)(score, images, penultimate_layer=layer, seek_penultimate_conv_layer=False,
                                                                         expand_cam=False, normalize_cam=False)


KINDS = {
    "applications": (applications_model, "out_relu", False),
    "sequential": (sequential_nested, "s2_relu", False),
    "sigmoid": (functional_sigmoid, "c2", True),
    "subclassed": (subclassed, "sc2", False),
    "functional": (functional_softmax, "c2", False),
}


def _model(kind, tmp_path):
    if kind in ("keras_file", "h5_file"):
        return _saved(functional_softmax, ".keras" if kind == "keras_file" else ".h5", tmp_path)(), "c2", False
    make, layer, binary = KINDS[kind]
    return make(), layer, binary


#: Under JAX (tests/test_jax_backend.py) the keras.applications kind and the model files are left out: they repeat the functional one's code path.
_SAME_PATH = pytest.mark.not_on_jax
#: tests/test_torch_backend.py reruns the functional kind under torch (torch_rerun).
ALL_KINDS = [*(pytest.param(k, marks=_SAME_PATH) if k == "applications" else pytest.param(k, marks=pytest.mark.torch_rerun) if k == "functional" else k
               for k in KINDS),
             pytest.param("keras_file", marks=_SAME_PATH), pytest.param("h5_file", marks=_SAME_PATH)]
TARGETS = {False: np.array([0, 1, 2, 1]), True: np.array([0, 1, 1, 0])}


@pytest.mark.tensorflow
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_any_classifier_gradcam_equals_tf_keras_vis(kind, tmp_path):
    model, layer, binary = _model(kind, tmp_path)
    images, targets = _images(4), TARGETS[binary]
    assert model_card(as_classifier(model))["gradcam_layer"] == layer  # the last feature map before the head
    maps = gradcam(model, images, targets=targets, upsample=False)
    # tf-keras-vis needs a functional graph (a twin on the same layers adds no weights); its ReplaceToLinear
    # linearises the last layer's activation, which a Softmax layer has not: the twin ends at its input
    ref_model = (_functional_twin(model) if kind == "subclassed" else keras.Model(model.inputs, model.get_layer("dense").output)
                 if kind == "sequential" else model)
    ref = np.asarray(_tfkv_gradcam(ref_model, images, targets, layer, binary), np.float32)
    if binary:
        ref = ref / 2  # logits [-z/2, z/2]: half of BinaryScore's z and -z
    assert ref.max() > 0
    np.testing.assert_allclose(maps, ref, atol=1e-4 * ref.max(), rtol=1e-4)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_any_classifier_read_untouched_and_curves_equal_the_slow_loop(kind, tmp_path):
    model, layer, binary = _model(kind, tmp_path)
    images, targets = _images(4), TARGETS[binary]
    before = [w.copy() for w in model.get_weights()]
    probs_before = np.asarray(model(images))
    ours = as_classifier(model)
    assert [ours.get_layer(n).name for n in ("logits", "probs", "features", layer)]
    # the user's model: same weights, same outputs, no new node on any of its layers
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    np.testing.assert_array_equal(np.asarray(model(images)), probs_before)
    leaves = [l for l in (model.layers if kind != "sequential" else model.layers + model.layers[0].layers) if not isinstance(l, keras.Model)]
    assert leaves and all(len(l._inbound_nodes) <= 1 for l in leaves)
    probs = np.asarray(ours(images))
    want = np.concatenate([1 - probs_before, probs_before], 1) if binary else probs_before
    np.testing.assert_allclose(probs, want, atol=1e-6)
    heat = gradcam(model, images, targets=targets)
    assert heat.max() > 0
    for order in ("morf", "random"):
        got = perturbation_curves(model, images, heat, targets=targets, region_size=8, order=order, perturbation=GaussianNoise(0.1), seed=3)
        slow = slow_curves(ours, images, heat, 8, order, GaussianNoise(0.1), 3, np.arange(4), targets)
        np.testing.assert_allclose(got, slow, atol=1e-5)


@pytest.mark.tensorflow
def test_tf_keras_vis_explainers_take_any_classifier():
    model = functional_softmax()
    images = _images(2)
    ours = as_classifier(model)
    for method in ("gradcampp", "saliency"):
        a = TfKerasVis(method=method)(adapted(model, images), images, np.array([0, 2]))
        from xbench.explain.tfkv import tfkv_maps

        b = tfkv_maps(model, images, np.array([0, 2]), method)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        assert a.shape == (2, S, S) and np.isfinite(a).all() and a.max() > 0
    first = adapted(model, images)
    assert adapted(model, images) is first and first is not ours  # cached per model: the compiled steps are reused


def test_preprocess_runs_inside_the_step_on_0_255_pixels():
    model = functional_softmax()
    images = _images(3)
    fn = lambda x: (x - 127.5) / 64.0
    heat = gradcam(model, images, preprocess=fn)
    # by hand: the model on preprocessed pixels, Grad-CAM at c2 of that input
    ref = gradcam(model, fn(images * 255.0).astype(np.float32))
    np.testing.assert_allclose(heat, ref, rtol=1e-4, atol=1e-6)
    got = perturbation_curves(model, images, heat, region_size=8, order="morf", seed=1, preprocess=fn)
    slow = slow_curves(lambda z: model(fn(np.asarray(z) * 255.0)), images, heat, 8, "morf", GaussianNoise(0.1), 1, np.arange(3))
    np.testing.assert_allclose(got, slow, atol=1e-5)
    named = as_classifier(model, preprocess="vgg16")  # keras.applications.vgg16.preprocess_input, inside the model
    np.testing.assert_allclose(np.asarray(named(images)), np.asarray(model(keras.applications.vgg16.preprocess_input(images * 255.0))), atol=1e-5)


def test_logits_output_and_named_logits_layer():
    keras.utils.set_random_seed(5)
    inp = keras.Input((S, S, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    z = keras.layers.Dense(3, name="scores")(x)
    logit_model = keras.Model(inp, z)
    scaled = keras.Model(inp, keras.layers.Activation("softmax")(keras.layers.Rescaling(2.0, name="temperature")(z)))
    images = _images(3)
    a = as_classifier(logit_model, output="logits")
    e = np.exp(np.asarray(logit_model(images), np.float64))
    np.testing.assert_allclose(np.asarray(a(images)), e / e.sum(1, keepdims=True), atol=1e-6)
    # the input of the final softmax are the logits (temperature included)
    b = as_classifier(scaled)
    np.testing.assert_allclose(np.asarray(b(images)), np.asarray(scaled(images)), atol=1e-6)
    # naming a layer whose softmax is not the output is refused, in one sentence
    with pytest.raises(AdaptError, match=r"softmax of 'scores' is not the model's output.*logits_layer="):
        as_classifier(scaled, logits_layer="scores")
    with pytest.raises(AdaptError, match="no such layer"):
        as_classifier(scaled, logits_layer="nope")


def test_unreadable_models_say_what_to_pass():
    inp = keras.Input((S, S, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    odd = keras.Model(inp, keras.layers.Dense(3, activation="relu", name="relu_out")(x))
    with pytest.raises(AdaptError, match=r"cannot find the logits.*logits_layer=.*output='logits'"):
        as_classifier(odd)

    class Reordered(Subclassed):
        def call(self, x):
            return self.out(self.pool(self.conv2(self.conv(x * 3.0))))

    m = Reordered()
    with pytest.raises(AdaptError, match="its call is not its layers applied in order"):
        as_classifier(m, image_size=S)
    # without instructions, perturbation_curves still takes a model whose output it cannot read as logits (as probabilities)
    curves = perturbation_curves(odd, _images(2), np.ones((2, S, S), np.float32), region_size=16, order="morf")
    assert curves.shape == (2, 5)


def test_adaptation_follows_weight_changes():
    model = functional_softmax()
    images = _images(2)
    first = gradcam(model, images, targets=np.array([0, 1]))
    w = model.get_layer("c2").get_weights()
    model.get_layer("c2").set_weights([w[0] * -1.5, w[1]])
    second = gradcam(model, images, targets=np.array([0, 1]))
    fresh = gradcam(as_classifier(model), images, targets=np.array([0, 1]))
    np.testing.assert_allclose(second, fresh, rtol=1e-5, atol=1e-7)
    assert not np.allclose(first, second)


# ------------------------------------------------------------------ command line


def _phantom_folder(phantom_db: Path, dst: Path, per_class: int = 4, rename=lambda c: c.replace(" ", "_")) -> list[str]:
    classes = []
    for cdir in sorted(p for p in phantom_db.iterdir() if p.is_dir()):
        name = rename(cdir.name)
        classes.append(name)
        for kind, root in (("images", dst / "images"), ("lesions", dst / "lesions")):
            (root / name).mkdir(parents=True, exist_ok=True)
            for f in sorted((cdir / kind).glob("*.png"))[:per_class]:
                shutil.copy(f, root / name / f.name)
    return sorted(classes)


def _cli(args, cwd, cache):
    return xbench(args, cwd=cwd, cache=cache, extra_env={"KERAS_BACKEND": "tensorflow"})


@pytest.mark.slow
def test_cli_scores_a_model_file_on_a_folder_as_the_python_api_does(tmp_path, phantom_db):
    from xbench.data.decode import decode_image
    from xbench.metrics.aopc import aopc_per_image
    from xbench.pipeline.results import read_job

    classes = _phantom_folder(phantom_db, tmp_path / "data")
    keras.utils.set_random_seed(7)
    inp = keras.Input((48, 48, 1))  # a grey-scale model, trained elsewhere on 0-255 pixels
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="pred")(x), name="greynet")
    model.save(tmp_path / "greynet.keras")

    run = tmp_path / "run"
    r = _cli(["model=file", f"model.path={tmp_path / 'greynet.keras'}", "model.preprocess=scale255", "data=folder",
              f"data.root={tmp_path / 'data' / 'images'}", f"data.lesion_root={tmp_path / 'data' / 'lesions'}", "score.subset=all",
              "score.controls=[random,oracle]", f"hydra.run.dir={run}"], tmp_path, tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    job = read_job(run)
    m = job.metrics
    assert m.training is None and m.model.file.endswith("greynet.keras") and len(m.model.file_sha256) == 64
    assert m.data.class_names == classes and m.data.split_counts == {"train": 0, "val": 0, "test": 16} and m.data.image_size == 48
    assert not (run / "history.csv").exists()

    # the same model and images through the Python API
    split = __import__("pandas").read_csv(run / "split.csv")
    images = np.stack([decode_image(tmp_path / "data" / "images" / p, 48) for p in split["path"]]).astype(np.float32) / 255.0
    c = job.curves
    ids = c.image_ids
    sub = images[ids]
    user = keras.saving.load_model(tmp_path / "greynet.keras")
    heat = gradcam(user, sub, targets=c.targets, preprocess="scale255")
    sc = m.scoring
    morf = perturbation_curves(user, sub, heat, targets=c.targets, region_size=sc.region_size, order="morf", perturbation=GaussianNoise(0.1),
                               seed=m.seed, image_ids=ids, preprocess="scale255")
    np.testing.assert_allclose(c.curves[("gradcam", "morf")], morf, atol=1e-5)
    assert abs(sc.methods["gradcam"].orders["morf"].aopc.mean - float(aopc_per_image(morf).mean())) < 1e-6
    probs = np.asarray(as_classifier(user, preprocess="scale255")(images))
    assert m.test.accuracy == pytest.approx(float((probs.argmax(1) == split["label"].map({n: i for i, n in enumerate(classes)}).to_numpy()).mean()))
    assert "oracle" in sc.methods  # lesion masks from data.lesion_root

    # a second run reuses the cached heatmaps and curve chunks (same file, same reading)
    r2 = _cli(["model=file", f"model.path={tmp_path / 'greynet.keras'}", "model.preprocess=scale255", "data=folder",
               f"data.root={tmp_path / 'data' / 'images'}", "score.subset=all", "plots=false", f"hydra.run.dir={tmp_path / 'run2'}"], tmp_path, tmp_path / "cache")
    assert r2.returncode == 0, r2.stderr[-3000:]
    again = read_job(tmp_path / "run2")
    np.testing.assert_array_equal(again.curves.curves[("gradcam", "morf")], c.curves[("gradcam", "morf")])
    assert again.metrics.scoring.heatmap_cache_hit
    # the same model on other images with the same names and labels: nothing cached may be reused
    from PIL import Image

    other = tmp_path / "other"
    shutil.copytree(tmp_path / "data" / "images", other)
    for f in other.rglob("*.png"):
        a = np.asarray(Image.open(f)).copy()
        a[: a.shape[0] // 2] = 0
        Image.fromarray(a).save(f)
    r3 = _cli(["model=file", f"model.path={tmp_path / 'greynet.keras'}", "model.preprocess=scale255", "data=folder",
               f"data.root={other}", "score.subset=all", "plots=false", f"hydra.run.dir={tmp_path / 'run3'}"], tmp_path, tmp_path / "cache")
    assert r3.returncode == 0, r3.stderr[-3000:]
    third = read_job(tmp_path / "run3")
    assert not third.metrics.scoring.heatmap_cache_hit
    assert not np.allclose(third.curves.curves[("gradcam", "morf")], c.curves[("gradcam", "morf")])


@pytest.mark.not_on_jax  # the command line's refusals are backend-free
def test_cli_refuses_in_one_line_before_any_work(tmp_path, phantom_db):
    _phantom_folder(phantom_db, tmp_path / "data", per_class=1)
    keras.utils.set_random_seed(0)
    inp = keras.Input((40, 40, 3))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inp)))
    keras.Model(inp, out).save(tmp_path / "three.keras")
    keras.Model(inp, [out, keras.layers.Dense(1)(keras.layers.Flatten()(inp))]).save(tmp_path / "two.keras")
    cases = [
        (["model=file", f"model.path={tmp_path / 'three.keras'}", "data=folder", f"data.root={tmp_path / 'data' / 'images'}"],
         "data.classes: the model has 3 outputs but the data has 4 classes"),
        (["model=file", f"model.path={tmp_path / 'missing.keras'}", "data=folder", f"data.root={tmp_path / 'data' / 'images'}"],
         "model.path: model file"),
        (["model=file", f"model.path={tmp_path / 'three.keras'}", "data=folder", f"data.root={tmp_path / 'data' / 'images'}", "data.image_size=64"],
         "data.image_size=64: the model takes 40 px images"),
        (["model=file", f"model.path={tmp_path / 'three.keras'}", "model.preprocess=vgg17", "data=folder", f"data.root={tmp_path / 'data'}"],
         "model.preprocess: unknown preprocessing 'vgg17'"),
        (["model=file", f"model.path={tmp_path / 'three.keras'}", "data=folder", f"data.root={tmp_path / 'nowhere'}"],
         "data.root"),
        (["model=file", f"model.path={tmp_path / 'three.keras'}", "data=folder", f"data.root={tmp_path / 'data' / 'images'}",
          "data.classes=[COVID,Normal,Lung_Opacity]", "score.region_size=50"],
         "score.region_size: 50 px is larger than the 40 px image the model takes"),
        (["model=file", f"model.path={tmp_path / 'two.keras'}", "data=folder", f"data.root={tmp_path / 'data' / 'images'}"],
         "model.path: the model has 2 outputs"),
    ]
    for args, want in cases:  # in this process (one real subprocess: tests/test_app.py)
        code, stderr = refusal(args, tmp_path / "cache")
        err = [l for l in stderr.splitlines() if l.startswith("xbench: error")]
        assert code == 2 and len(err) == 1 and want in err[0], (args, stderr[-2000:])
        assert "Traceback" not in stderr
    assert not (tmp_path / "cache").exists()  # refused before decoding anything


@pytest.mark.tensorflow
def test_a_custom_layer_is_named_and_imports_load_it(tmp_path):
    from xbench.core.errors import ConfigError
    from xbench.models.model_file import ModelFile

    pkg = tmp_path / "mylayers_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import keras\n"
        "@keras.saving.register_keras_serializable(package='mine')\n"
        "class Doubler(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return 2.0 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import mylayers_pkg

        inp = keras.Input((S, S, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3, name="c")(mylayers_pkg.Doubler()(inp)))
        keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x)).save(tmp_path / "custom.keras")
        keras.saving.get_custom_objects().pop("mine>Doubler")  # only ours: xbench's own layers stay registered
        with pytest.raises(ConfigError, match=r"custom object .*Doubler.*model.imports="):
            ModelFile(path=str(tmp_path / "custom.keras")).load()
        sys.modules.pop("mylayers_pkg")
        got = ModelFile(path=str(tmp_path / "custom.keras"), imports=["mylayers_pkg"]).load()
        assert model_card(got)["gradcam_layer"] == "c"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mylayers_pkg", None)


def _block(marker: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- {marker}:[^>]*-->\s*```\w+\n(.*?)```", text, re.S)
    assert m, f"README has no block marked {marker}"
    return m.group(1)


@pytest.mark.slow
def test_readme_score_your_own_model_runs_verbatim(tmp_path, phantom_db):
    _phantom_folder(phantom_db, tmp_path / "data", per_class=3)
    shutil.move(tmp_path / "data" / "images", tmp_path / "my_xrays")
    readme_classifier(tmp_path / "my_classifier.keras")
    env = {**os.environ, "XBENCH_CACHE": str(tmp_path / "cache"), "KERAS_BACKEND": "tensorflow"}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    for line in _block("byo-commands").strip().splitlines():
        r = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (line, r.stderr[-3000:])
    assert (tmp_path / "outputs" / "my_classifier" / "report" / "summary.md").is_file()
    assert len(list((tmp_path / "outputs" / "my_classifier").glob("*/metrics.json"))) == 2
    r = subprocess.run([sys.executable, "-c", _block("byo-python")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    aopc = float(r.stdout.strip().splitlines()[-1])
    assert np.isfinite(aopc) and -1 <= aopc <= 1


# ------------------------------------------------------------------ data=folder


def test_folder_source_scans_any_depth_and_splits_as_asked(tmp_path):
    from PIL import Image

    from xbench.core.errors import DataError
    from xbench.data.split import stratified_sample
    from xbench.pipeline.sources import FolderSource

    root = tmp_path / "imgs"
    for c, n in (("b_virus", 6), ("a_bacteria", 9), ("c_normal", 3)):
        for i in range(n):
            d = root / c / ("sub" if i % 2 else "")
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((10, 14), 25 * i, np.uint8)).save(d / f"{c}-{i}.png")
    (root / "a_bacteria" / ".hidden.png").write_bytes(b"x")
    (root / "a_bacteria" / "notes.txt").write_text("not an image")
    src = FolderSource(root=str(root))
    rec = src.records(0)
    assert rec.class_names == ["a_bacteria", "b_virus", "c_normal"]  # sorted: image_dataset_from_directory's order
    assert np.bincount(rec.labels).tolist() == [9, 6, 3] and all(p.suffix == ".png" and not p.name.startswith(".") for p in rec.paths)
    assert FolderSource(root=str(root), classes=["c_normal", "a_bacteria"]).records(0).class_names == ["c_normal", "a_bacteria"]

    src.score_only = True
    assert (src.split(rec, 0) == "test").all()
    sampled = FolderSource(root=str(root), test_size=6)
    sampled.score_only = True
    s = sampled.split(rec, 0)
    assert (s == "test").sum() == 6 and set(s) == {"test", "none"}
    assert np.bincount(rec.labels[s == "test"], minlength=3).tolist() == [3, 2, 1]  # shares 9:6:3 kept
    assert np.array_equal(s, sampled.split(rec, 0)) and not np.array_equal(s, sampled.split(rec, 1))  # seeded
    # by hand: 5 of (9, 6, 3) -> exact shares 2.5, 1.67, 0.83; floors with >= 1 each (2, 1, 1), the largest remainder (b) gets the last
    assert np.bincount(rec.labels[stratified_sample(rec.labels, 5, 0)], minlength=3).tolist() == [2, 2, 1]
    assert {"train", "test"} <= set(FolderSource(root=str(root)).split(rec, 0)) <= {"train", "val", "test"}  # training on the folder: fractions

    table = tmp_path / "split.csv"
    rel = [p.relative_to(root).as_posix() for p in rec.paths]
    table.write_text("path,split\n" + "".join(f"{r},{'test' if i % 3 == 0 else 'train'}\n" for i, r in enumerate(rel[:-2])))
    s = FolderSource(root=str(root), split_csv=str(table)).split(rec, 0)
    assert s[:-2].tolist() == ["test" if i % 3 == 0 else "train" for i in range(len(rel) - 2)] and s[-2:].tolist() == ["none", "none"]
    table.write_text("path,split\nnowhere.png,test\n")
    with pytest.raises(DataError, match="puts none of the 18 images"):
        FolderSource(root=str(root), split_csv=str(table)).split(rec, 0)
    with pytest.raises(DataError, match="class folder .*missing"):
        FolderSource(root=str(root), classes=["a_bacteria", "pneumonia"]).records(0)
    with pytest.raises(ValueError, match="test_size: give test_size or split_csv, not both"):
        FolderSource(root=str(root), test_size=3, split_csv=str(table))


# ------------------------------------------------------------------ what an audit found (each case failed before its fix)


def test_models_that_are_refused_say_why_and_odd_names_are_kept():
    inp = keras.Input((S, S, 3))
    feats = keras.layers.GlobalAveragePooling2D(name="features")(keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp))
    soft = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="probs")(feats))
    with pytest.raises(AdaptError, match="output='logits'.*applies a softmax.*leave output='probs'"):
        as_classifier(soft, output="logits")
    multi = keras.Model(inp, keras.layers.Dense(3, activation="sigmoid")(feats))
    with pytest.raises(AdaptError, match="3 independent sigmoid outputs \\(multi-label\\): read it with xbench.models.as_multilabel"):
        as_classifier(multi)
    two_in = keras.Model([inp, keras.Input((3,))], keras.layers.Dense(2, activation="softmax")(feats))
    with pytest.raises(AdaptError, match="has 2 inputs"):
        as_classifier(two_in)
    two_out = keras.Model(inp, [keras.layers.Dense(2, activation="softmax")(feats), keras.layers.Dense(1)(feats)])
    with pytest.raises(AdaptError, match="has 2 outputs"):
        as_classifier(two_out)
    # a user's layers named like xbench's own (probs, features) are copied under other names, the card names the copy
    images = _images(2)
    ours = as_classifier(soft)
    np.testing.assert_allclose(np.asarray(ours(images)), np.asarray(soft(images)), atol=1e-6)
    assert model_card(ours)["gradcam_layer"] == "conv" and "features_user" in [l.name for l in ours.layers]
    # nested models reusing a layer name: the copies get distinct names
    inner = keras.Sequential([keras.Input((S, S, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="conv")], name="inner")
    x = keras.layers.Conv2D(5, 3, activation="relu", name="conv")(inner(inp))
    nested = keras.Model(inp, keras.layers.Dense(2, activation=keras.activations.softmax)(keras.layers.GlobalAveragePooling2D()(x)))
    got = as_classifier(nested)
    np.testing.assert_allclose(np.asarray(got(images)), np.asarray(nested(images)), atol=1e-6)
    assert model_card(got)["gradcam_layer"] == "conv_user"  # the outer conv, the last feature map


def test_a_half_precision_head_is_read_and_the_user_model_saves_unchanged(tmp_path):
    import zipfile

    keras.utils.set_random_seed(0)
    inp = keras.Input((S, S, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c", dtype="mixed_float16")(inp)
    x = keras.layers.GlobalAveragePooling2D(dtype="mixed_float16")(x)
    half = keras.Model(inp, keras.layers.Dense(3, activation="softmax", dtype="mixed_float16")(x))
    images = _images(2)
    np.testing.assert_allclose(np.asarray(as_classifier(half)(images)), np.asarray(half(images), np.float32), atol=1e-2)

    model = functional_softmax()
    model.save(tmp_path / "before.keras")
    gradcam(model, images)
    gradcam(model, images, preprocess="scale255")
    model.save(tmp_path / "after.keras")
    listing = lambda p: sorted((i.filename, i.file_size) for i in zipfile.ZipFile(p).infolist() if i.filename != "metadata.json")
    assert listing(tmp_path / "after.keras") == listing(tmp_path / "before.keras")  # nothing of xbench's is stored on the model


def test_a_weight_swap_rebuilds_the_cached_copy():
    model = functional_softmax()
    images = _images(2)
    first = adapted(model, images)
    dense = model.get_layer("pred")
    k, b = dense.get_weights()
    k[[0, 1]] = k[[1, 0]]  # same sum, same sum of squares: only the positions change
    dense.set_weights([k, b])
    second = adapted(model, images)
    assert second is not first
    np.testing.assert_allclose(np.asarray(second(images)), np.asarray(model(images)), atol=1e-6)


def test_model_file_outputs_are_read_through_softmax_layers_without_keras(tmp_path):
    from xbench.models.model_file import ModelFile

    inp = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3)(inp))
    keras.Model(inp, keras.layers.Softmax()(keras.layers.Dense(5)(x))).save(tmp_path / "soft5.keras")
    keras.Model(inp, keras.layers.Softmax()(keras.layers.Dense(5)(x))).save(tmp_path / "soft5.h5")
    keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(3), keras.layers.Activation("softmax")]).save(tmp_path / "seq3.keras")
    keras.Model(inp, [keras.layers.Dense(2)(x), keras.layers.Dense(1)(x)]).save(tmp_path / "two.keras")
    got = {f: ModelFile(path=str(tmp_path / f)).describe() for f in ("soft5.keras", "soft5.h5", "seq3.keras", "two.keras")}
    assert [(g.input_shape, g.outputs, g.n_outputs) for g in got.values()] == [((16, 16, 3), 5, 1), ((16, 16, 3), 5, 1), ((16, 16, 3), 3, 1), ((16, 16, 3), 1, 2)]


def test_folder_refusals_found_by_the_audit(tmp_path, monkeypatch):
    from PIL import Image

    from xbench.core.errors import DataError
    from xbench.pipeline.sources import FolderSource

    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(root / c / f"{c}{i}.jpg")
        (tmp_path / "masks" / c).mkdir(parents=True)
        Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "masks" / c / f"{c}0.png")  # .png beside .jpg images
    with pytest.raises(DataError, match="lists 'a' twice"):
        FolderSource(root=str(root), classes=["a", "a", "b"]).records(0)
    with pytest.raises(DataError, match=r"data.lesion_root .* has no mask at any image's relative path \(e.g. a/a0.jpg\)"):
        FolderSource(root=str(root), lesion_root=str(tmp_path / "masks")).records(0)
    # a split.csv of absolute paths read against a relative root (the README's data.root=my_xrays style)
    monkeypatch.chdir(tmp_path)
    rec = FolderSource(root="imgs").records(0)
    (tmp_path / "split.csv").write_text("path,split\n" + "".join(f"{(root / 'a' / f'a{i}.jpg').resolve()},test\n" for i in range(3)))
    s = FolderSource(root="./imgs/../imgs", split_csv="split.csv").split(rec, 0)
    assert s.tolist() == ["test"] * 3 + ["none"] * 3
