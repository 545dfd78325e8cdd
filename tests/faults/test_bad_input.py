"""Every bad input gets one line that says what to do, before long work starts, and loses nothing computed.

The table in docs/robustness.md lists these cases; each row is a test here.
"""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers import compose
from xbench.apps.run import preflight, run
from xbench.core.errors import ConfigError, DataError, XbenchError

from .helpers import xbench

# ---------------------------------------------------------------- config ----
CONFIG_CASES = [
    (["model=resnet1000"], "model=resnet1000: no such model; choose one of: densenet121"),
    (["model=model_schema"], "model=model_schema: no such model; choose one of: densenet121"),  # schemas are not options
    (["data=synthetic_schema"], "data=synthetic_schema: no such data; choose one of: covid_radiography, folder, pediatric, synthetic"),
    (["setup=online"], "setup=online: no such setup; choose one of: offline, pretrained"),
    (["data.n_per_class=3"], "data.n_per_class: need at least 10 phantoms per class to split 80/10/10, got 3"),
    (["train.fine_tune.lr=0"], "train.fine_tune.lr: must be > 0"),
    (["explainer=gradcam2"], "explainer=gradcam2: no such explainer; choose one of: center, deeplift, edge, eigencam, file, gradcam, gradcampp, guided_backprop"),
    (["perturbation=salt"], "perturbation=salt: no such perturbation; choose one of: blur"),
    (["model.backbone=vgg17"], "model.backbone: unknown backbone 'vgg17'"),
    (["explainer=scorecam", "explainer.impl=captum"], "explainer.impl: must be one of"),
    (["score.region_size=0"], "score.region_size: must be a positive number of pixels, got 0"),
    (["score.region_size=-4"], "score.region_size: must be a positive number of pixels, got -4"),
    (["score.region_size=100"], "score.region_size: 100 px is larger than the 72 px image"),
    (["perturbation.sigma=-0.1"], "perturbation.sigma: must be >= 0, got -0.1"),
    (["perturbation=blur", "perturbation.sigma=0"], "perturbation.sigma: must be > 0"),
    (["data.fractions=[0.8,0.1,0.2]"], "data.fractions: fractions must sum to 1"),
    (["data.fractions=[0.9,0.1,0.0]"], "data.fractions: train, val and test all need images"),
    (["data.image_size=16"], "data.image_size: 16 px is below vgg16's minimum of 32 px"),
    (["model=inceptionv3", "data.image_size=64"], "data.image_size: 64 px is below inceptionv3's minimum of 75 px"),
    (["model.weights=/no/such/weights.h5"], "model.weights: weights file '/no/such/weights.h5' does not exist"),
    (["data=covid_radiography"], "data.root: not set"),
    (["modle.backbone=vgg16"], "modle.backbone=vgg16: no such key in the config"),
    (["score.max_image=4"], "score.max_image=4: no such key in the config"),
    (["+model.extra=1"], "model.extra: not a setting of model"),
    (["train.epochs=many"], "train.epochs=many: Error merging override"),
    (["train.select=accuracy"], "train.select: must be one of"),
    (["score.orders=[morf,best]"], "score.orders: choose from ['morf', 'lerf', 'random', 'deletion', 'insertion']"),
    (["score.bootstrap=100"], "score.bootstrap: use at least 1,000 resamples"),
    (["score.chunk_images=0"], "score.chunk_images: must be >= 1"),
    (["model=vgg16,densenet201"], "a sweep needs -m"),
    (["-m", "seed=0,1", "data.image_size=24,72"], "data.image_size: 24 px is below vgg16's minimum of 32 px (in the job"),
    (["-m", "model=vgg16,vgg61"], "model=vgg61: no such model"),
    (["data._target_=builtins.exec"], "data._target_"),
    (["data.root=/data/Données X"], '''cannot parse the override 'data.root=/data/Données X'; quote a value with spaces or non-ASCII characters: "data.root='/data/Données X'"'''),
]


@pytest.mark.parametrize("overrides,message", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_config_errors_are_caught_before_any_job_starts(overrides, message):
    with pytest.raises(ConfigError) as err:
        preflight(overrides)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_a_missing_data_root_is_one_line_before_tensorflow_loads(tmp_path):
    # TF_CPP_MIN_LOG_LEVEL unset: were TensorFlow imported, its C++ start-up lines would show.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "XBENCH_FAULT")}
    env["XBENCH_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-m", "xbench", "data=covid_radiography", "data.root=/missing"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert (r.stdout + r.stderr).splitlines() == ["xbench: error: data.root '/missing' does not exist or is not a folder; "
                                                  "expected <root>/{COVID,Lung_Opacity,Normal,Viral Pneumonia}/images/<Class>-<n>.png (lung masks in .../masks/)"]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "cache").exists()


def test_a_user_error_in_the_job_is_one_line_on_the_console_with_the_traceback_in_the_log(phantom_db, tmp_path):
    root = tmp_path / "db"
    shutil.copytree(phantom_db, root)
    _empty_class(root)  # the folders are there (preflight passes); the job finds no images
    # TF_CPP_MIN_LOG_LEVEL unset, as on a user's machine.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "XBENCH_FAULT")}
    env["XBENCH_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-m", "xbench", "data=covid_radiography", f"data.root={root}", "hydra.run.dir=run"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    # Nothing filtered: TensorFlow's machine-dependent start-up lines (oneDNN, CUDA) must not reach the console at all.
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert lines == [f"xbench: error: class 'Normal' has no images in '{root}/Normal/images'; "
                     "expected <root>/{COVID,Lung_Opacity,Normal,Viral Pneumonia}/images/<Class>-<n>.png (lung masks in .../masks/)"]
    assert "has no images" not in r.stdout  # not a second copy from the job's console logger
    log = (tmp_path / "run" / "run.log").read_text()
    assert "Traceback" in log and "DataError" in log


def test_an_unknown_option_costs_nothing_and_exits_2(tmp_path):
    t0 = time.perf_counter()
    r = xbench(["-m", "model=vgg16,densnet201"], tmp_path, tmp_path / "cache")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("xbench: error: model=densnet201: no such model")
    assert "Traceback" not in r.stderr and not (tmp_path / "cache").exists() and not (tmp_path / "outputs").exists()
    assert time.perf_counter() - t0 < 60


# ------------------------------------------------------------------ data ----
def _job(root, *extra):
    return compose(["data=covid_radiography", f"data.root='{root}'", "data.balance=false", "data.image_size=32", "model.weights=none",
                    "train.epochs=1", "train.batch_size=16", "plots=false", "score.max_images=4", "score.bootstrap=1000", *extra])


@pytest.fixture()
def messy_db(phantom_db, tmp_path):
    """The phantom database under a path with spaces and non-ASCII letters, with every survivable defect."""
    root = tmp_path / "données radiographiques" / "COVID-19 Radiography Database"
    shutil.copytree(phantom_db, root)
    covid, normal, viral = root / "COVID" / "images", root / "Normal" / "images", root / "Viral Pneumonia" / "images"
    (covid / "COVID-3.png").write_bytes(b"")  # zero bytes
    data = (covid / "COVID-4.png").read_bytes()
    (covid / "COVID-4.png").write_bytes(data[: len(data) // 3])  # truncated
    (covid / "COVID-5.png").write_text("not an image at all\n")  # a text file named .png
    Image.new("L", (30, 30), 90).save(normal / "Normal-90.jpg")
    jpg = (normal / "Normal-90.jpg").read_bytes()
    (normal / "Normal-90.jpg").write_bytes(jpg[:100])  # truncated JPEG
    (normal / "README.txt").write_text("ignored: not an image suffix\n")
    (normal / ".DS_Store").write_bytes(b"\x00\x01")
    img = np.asarray(Image.open(viral / "Viral Pneumonia-1.png").convert("L"))
    Image.fromarray(np.dstack([img] * 3 + [np.full_like(img, 200)])).save(viral / "Viral Pneumonia-1.png")  # RGBA
    Image.fromarray(img).convert("P").save(viral / "Viral Pneumonia-2.png")  # palette
    Image.fromarray(img.astype(np.uint16) * 16).save(viral / "Viral Pneumonia-3.png")  # 16-bit (12 significant)
    mask = root / "Normal" / "masks" / "Normal-1.png"
    Image.open(mask).resize((17, 23)).save(mask)  # a mask of another size
    return root


def test_a_messy_database_at_an_odd_path_runs_and_lists_what_it_skipped(messy_db, tmp_path, cache_dir):
    m = run(_job(messy_db), tmp_path / "run").to_dict()
    skipped = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in m["data"]["skipped"]}
    assert sorted(skipped) == ["COVID-3.png", "COVID-4.png", "COVID-5.png", "Normal-90.jpg"]
    assert "zero-byte" in skipped["COVID-3.png"]
    assert m["data"]["class_counts"] == {"COVID": 9, "Lung_Opacity": 12, "Normal": 12, "Viral Pneumonia": 12}, m["data"]["class_counts"]
    # The other mask size is resized; lung share is on for every scored image.
    assert m["data"]["n_masks"] == 45 and m["scoring"]["methods"]["gradcam"]["localisation"]["lung_share"]["n"] >= 1
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_on_corrupt_error_stops_before_training_naming_a_file(messy_db, tmp_path, cache_dir):
    with pytest.raises(DataError, match=r"4 image file\(s\) cannot be decoded, first: .*COVID-3.png: zero-byte file; remove or replace them"):
        run(_job(messy_db, "data.on_corrupt=error"), tmp_path / "run")
    assert not (tmp_path / "run" / "history.csv").exists()


def _missing_root(root):
    shutil.rmtree(root)


def _missing_class(root):
    shutil.rmtree(root / "Lung_Opacity")


def _empty_class(root):
    for p in (root / "Normal" / "images").iterdir():
        p.unlink()


def _undecodable_class(root):
    for p in (root / "Normal" / "images").iterdir():
        p.write_bytes(b"garbage")


def _not_images(root):
    for p in (root / "COVID" / "images").iterdir():
        p.rename(p.with_suffix(".txt"))


LAYOUT_CASES = [
    (_missing_root, "data.root '{root}' does not exist or is not a folder; expected <root>/{{COVID,Lung_Opacity,Normal,Viral Pneumonia}}"),
    (_missing_class, "class folder '{root}/Lung_Opacity' is missing (found: ['COVID', 'Normal', 'Viral Pneumonia'])"),
    (_empty_class, "class 'Normal' has no images in '{root}/Normal/images'"),
    (_not_images, "class 'COVID' has no images in '{root}/COVID/images'"),
    (_undecodable_class, "class(es) ['Normal'] have no decodable image under '{root}'"),
]


@pytest.mark.parametrize("damage,message", LAYOUT_CASES, ids=[c[0].__name__.strip("_") for c in LAYOUT_CASES])
def test_layout_errors_stop_the_job_in_seconds(damage, message, phantom_db, tmp_path, cache_dir):
    root = tmp_path / "db with space"
    shutil.copytree(phantom_db, root)
    damage(root)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        run(_job(root), tmp_path / "run")
    assert message.format(root=root) in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "run" / "history.csv").exists()


def test_xbench_errors_are_the_only_ones_shown_as_one_line():
    assert issubclass(ConfigError, XbenchError) and issubclass(DataError, XbenchError)
    assert subprocess.run([sys.executable, "-c", "import xbench.core.errors"], timeout=60).returncode == 0
