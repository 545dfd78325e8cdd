"""Maps made elsewhere (explainer=file): the two layouts, the resize rule, every refusal in one line, and a maps file end to end
through the command line (the README's commands, verbatim) whose figures equal the Grad-CAM job's, the Python API's and a slow loop's."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.helpers import compose, refusal
from tests.references import readme_classifier, slow_curves
from xbench.core.errors import DataError
from xbench.explain import FileMaps, build

README = Path(__file__).resolve().parents[1] / "README.md"


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------ the file, in Python


def test_both_layouts_give_the_same_maps_resized_as_gradcam_is(tmp_path):
    from xbench.explain.cam import upsample

    rng = np.random.default_rng(0)
    small, full = rng.random((7, 7)), rng.random((16, 16))
    np.savez(tmp_path / "keyed.npz", **{"b/two.png": full, "./a/one.png": small})  # a leading ./ is dropped
    np.savez(tmp_path / "stacked.npz", maps=np.stack([upsample(small[None], (16, 16))[0], full]), paths=np.array(["a\\one.png", "b/two.png"]))
    keyed, stacked = build("file", path=str(tmp_path / "keyed.npz")), FileMaps(path=str(tmp_path / "stacked.npz"))
    assert type(keyed) is FileMaps and keyed.name == "file_maps" and keyed.paths == ["b/two.png", "a/one.png"]
    images = np.zeros((2, 16, 16, 3), np.float32)
    paths = ["a/one.png", "b/two.png"]
    got = keyed.for_images(paths)(None, images, None)  # image id i -> paths[i]
    np.testing.assert_array_equal(got, stacked.for_images(paths)(None, images, None))
    np.testing.assert_array_equal(got[0], upsample(small[None].astype(np.float32), (16, 16))[0])  # bilinear, half-pixel centres
    np.testing.assert_array_equal(got[1], full.astype(np.float32))  # the image's size: read as it is
    np.testing.assert_array_equal(keyed.read(paths, (16, 16)), got)
    np.testing.assert_array_equal(keyed(None, images, None), got[::-1])  # unbound: image id i is the file's i-th map
    # a rewritten file is another cache entry; resize=none refuses a map of another size, before any is read
    assert keyed.maps_revision != FileMaps(path=str(tmp_path / "stacked.npz")).maps_revision
    strict = FileMaps(path=str(tmp_path / "keyed.npz"), resize="none")
    with pytest.raises(DataError, match=r"the map of 'a/one.png' is 7x7, the image 16x16; .*resize=bilinear") as e:
        strict.for_images(paths, ids=[0, 1], size=(16, 16))
    _one_line(e)


def _write(path: Path, how):
    if callable(how):
        how(path)
    return path


#: (what the file holds, the one line that refuses it): each message names the file and says what to do.
_BAD = [
    ("missing", None, "does not exist; write it with np.savez"),
    ("text", lambda p: p.write_text("not an archive"), "is not a readable .npz file"),
    ("one array", lambda p: np.save(p.with_suffix(".npy"), np.zeros((2, 4, 4))) or p.with_suffix(".npy").rename(p),
     "holds one array, not an .npz of maps"),
    ("empty", lambda p: np.savez(p), "holds no arrays"),
    ("maps, no paths", lambda p: np.savez(p, maps=np.zeros((2, 4, 4))), "holds 'maps' but no 'paths'"),
    ("paths, no maps", lambda p: np.savez(p, paths=np.array(["a.png"])), "holds 'paths' but no 'maps'"),
    ("a stack of 2-D", lambda p: np.savez(p, maps=np.zeros((4, 4)), paths=np.array(["a.png"])), "'maps' in '.*' has shape \\(4, 4\\), not \\(N, height, width\\)"),
    ("counts differ", lambda p: np.savez(p, maps=np.zeros((2, 4, 4)), paths=np.array(["a.png"])), "holds 2 maps but 1 paths"),
    ("object paths", lambda p: np.savez(p, maps=np.zeros((1, 4, 4)), paths=np.array(["a.png"], dtype=object)), "holds Python objects"),
    ("3-D map", lambda p: np.savez(p, **{"n/a.png": np.zeros((4, 4, 3))}), "the map of 'n/a.png' in '.*' has shape \\(4, 4, 3\\), not \\(height, width\\)"),
    ("NaN", lambda p: np.savez(p, **{"n/a.png": np.zeros((4, 4)), "c/b.png": np.full((4, 4), np.nan)}), "the map of 'c/b.png' .* holds NaN or infinite"),
    ("inf", lambda p: np.savez(p, maps=np.array([[[0, np.inf]]]), paths=np.array(["c/b.png"])), "the map of 'c/b.png' .* holds NaN or infinite"),
    ("beyond float32", lambda p: np.savez(p, **{"a.png": np.full((2, 2), 1e300)}), "beyond float32's range"),
    ("strings", lambda p: np.savez(p, **{"a.png": np.array([["x"]])}), "holds <U1 values, not real numbers"),
    ("empty map", lambda p: np.savez(p, **{"a.png": np.zeros((0, 4))}), "is empty"),
    ("twice", lambda p: np.savez(p, maps=np.zeros((2, 4, 4)), paths=np.array(["a/x.png", "./a/x.png"])), "two maps for the image 'a/x.png'"),
]


@pytest.mark.parametrize("what, how, message", _BAD, ids=[b[0] for b in _BAD])
def test_a_bad_file_is_refused_in_one_line_naming_it(tmp_path, what, how, message):
    path = _write(tmp_path / "maps.npz", how)
    with pytest.raises(ValueError, match=f"^path: .*{message}") as e:
        FileMaps(path=str(path))
    assert str(path) in _one_line(e)


def test_settings_and_missing_images_are_refused_in_one_line(tmp_path):
    np.savez(tmp_path / "maps.npz", **{"n/a.png": np.ones((4, 4))})
    for params, message in [({}, "^path: not set"), ({"path": str(tmp_path / "maps.npz"), "resize": "cubic"}, "^resize: must be one of"),
                            ({"path": str(tmp_path / "maps.npz"), "name": "file"}, "^name: 'file' cannot name the maps")]:
        with pytest.raises(ValueError, match=message) as e:
            FileMaps(**params)
        _one_line(e)
    maps = FileMaps(path=str(tmp_path / "maps.npz"))
    with pytest.raises(DataError, match=r"has no map for the image 'c/b.png' \(and 1 more of the 3 scored\); .*the file has e.g. 'n/a.png'") as e:
        maps.for_images(["n/a.png", "c/b.png", "c/c.png"], ids=[0, 1, 2])
    _one_line(e)
    with pytest.raises(DataError, match="holds 1 maps and has none for image id 1") as e:
        maps(None, np.zeros((2, 4, 4, 3)), None)
    _one_line(e)


@pytest.mark.not_on_jax  # the command line's refusals are backend-free
def test_what_cannot_recompute_the_maps_is_refused_at_config_time(tmp_path):
    """Before any data is read or model built: the metrics that recompute explanations, the sanity check, a bad file."""
    np.savez(tmp_path / "maps.npz", **{"n/a.png": np.ones((4, 4))})
    np.savez(tmp_path / "nan.npz", **{"n/a.png": np.full((4, 4), np.nan)})
    use = ["explainer=file", f"explainer.path={tmp_path / 'maps.npz'}"]
    cases = [
        (use + ["score.metrics=[sparseness,max_sensitivity]"], "score.metrics: max_sensitivity recompute the explanation"),
        (use + ["score.metrics=[random_logit]"], "score.metrics: random_logit recompute the explanation"),
        (use + ["sanity.enabled=true"], "sanity.enabled: the randomisation check recomputes the explanation"),
        (use + ["+experiment=sanity"], "sanity.enabled: the randomisation check recomputes the explanation"),
        (use + ["explainer.name=random"], "explainer.name: 'random' is a control's name"),
        (["explainer=file"], "explainer.path: not set"),
        (["explainer=file", f"explainer.path={tmp_path / 'none.npz'}"], "explainer.path: maps file"),
        (["explainer=file", f"explainer.path={tmp_path / 'nan.npz'}"], "explainer.path: the map of 'n/a.png'"),
    ]
    for args, want in cases:
        code, stderr = refusal(args, tmp_path / "cache")
        err = [l for l in stderr.splitlines() if l.startswith("xbench: error")]
        assert code == 2 and len(err) == 1 and want in err[0], (args, stderr[-2000:])
        assert "Traceback" not in stderr
    assert not (tmp_path / "cache").exists()
    cfg = compose(use + ["score.metrics=[sparseness,faithfulness_correlation]"])  # metrics of the maps alone, or of the model: fine
    from xbench.apps.run import build_job

    assert type(build_job(cfg).explainer) is FileMaps


# ------------------------------------------------------------------ end to end


def _block(marker: str) -> str:
    m = re.search(rf"<!-- {marker}:[^>]*-->\s*```\w+\n(.*?)```", README.read_text(), re.S)
    assert m, f"README has no block marked {marker}"
    return m.group(1)


def _readme_files(phantom_db: Path, folder: Path) -> None:
    """``my_classifier.keras`` (224 px, 4 classes) and ``my_xrays/<class>/<images>``, as in "Score your own model"."""
    for cdir in sorted(p for p in phantom_db.iterdir() if p.is_dir()):
        (folder / "my_xrays" / cdir.name.replace(" ", "_")).mkdir(parents=True)
        for f in sorted((cdir / "images").glob("*.png"))[:3]:
            shutil.copy(f, folder / "my_xrays" / cdir.name.replace(" ", "_") / f.name)
    readme_classifier(folder / "my_classifier.keras")


@pytest.mark.slow
@pytest.mark.not_on_jax
def test_grad_cam_maps_of_a_job_scored_from_a_file_on_the_readme_command_line_equal_the_job(tmp_path, phantom_db, monkeypatch):
    """A Grad-CAM job's maps written to maps.npz (keyed by relative path), scored by the README's command verbatim: its AOPC equals
    the Grad-CAM job's, its curves the Python API's on the same maps and a slow loop's; an image missing from the file is named."""
    import pandas as pd

    from xbench.apps.run import run
    from xbench.data.decode import decode_image
    from xbench.metrics.aopc import aopc_per_image
    from xbench.models.adapt import as_classifier
    from xbench.perturbation import GaussianNoise, perturbation_curves
    from xbench.pipeline.results import read_job

    _readme_files(phantom_db, tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("XBENCH_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    same = ["model=file", "model.path=my_classifier.keras", "model.preprocess=vgg16", "data=folder", "data.root=my_xrays", "plots=false"]
    run(compose(same + ["explainer=gradcam"]), tmp_path / "gradcam_run")  # in this process: the job whose maps the file holds
    grad = read_job(tmp_path / "gradcam_run")
    ids, split = grad.curves.image_ids, pd.read_csv(tmp_path / "gradcam_run" / "split.csv")
    assert len(ids) >= 2
    chunks = sorted((cache / "heatmaps").glob("gradcam-*.npy"))
    assert len(chunks) == 1  # the scored images' float32 maps, one chunk, in image-id order
    heat = np.load(chunks[0])
    paths = split["path"].to_numpy()[ids]
    np.savez(tmp_path / "maps.npz", **{p: m for p, m in zip(paths, heat)})

    # an image missing from the file: named in one line before any map is scored
    np.savez(tmp_path / "short.npz", **{p: m for p, m in zip(paths[1:], heat[1:])})
    with pytest.raises(DataError, match=f"has no map for the image '{re.escape(paths[0])}'") as e:
        run(compose(same + ["explainer=file", "explainer.path=short.npz"]), tmp_path / "short_run")
    _one_line(e)
    assert not (tmp_path / "short_run" / "curves.npz").exists()

    env = {**os.environ, "XBENCH_CACHE": str(cache), "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for line in _block("maps-commands").strip().splitlines():
        r = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (line, r.stderr[-3000:])
    (run_dir,) = [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")]
    job = read_job(run_dir)
    sc, c = job.metrics.scoring, job.curves
    assert sc.explainer == "file_maps" and set(sc.methods) == set(grad.metrics.scoring.methods) - {"gradcam"} | {"file_maps"}
    np.testing.assert_array_equal(c.image_ids, ids)
    for order in ("morf", "lerf"):  # the same maps, model and images: the Grad-CAM job's figures
        np.testing.assert_array_equal(c.curves[("file_maps", order)], grad.curves.curves[("gradcam", order)])
        assert sc.methods["file_maps"].orders[order].aopc.mean == grad.metrics.scoring.methods["gradcam"].orders[order].aopc.mean
    assert sc.methods["file_maps"].abpc.mean == grad.metrics.scoring.methods["gradcam"].abpc.mean

    # the Python API on the maps read back from the file, and a slow loop
    images = np.stack([decode_image(tmp_path / "my_xrays" / p, 224) for p in paths]).astype(np.float32) / 255.0
    maps = FileMaps(path="maps.npz").read(list(paths), (224, 224))
    user = keras.saving.load_model(tmp_path / "my_classifier.keras")
    morf = perturbation_curves(user, images, maps, targets=c.targets, region_size=sc.region_size, order="morf", perturbation=GaussianNoise(0.1),
                               seed=job.metrics.seed, image_ids=ids, preprocess="vgg16")
    np.testing.assert_allclose(c.curves[("file_maps", "morf")], morf, atol=1e-5)
    assert abs(sc.methods["file_maps"].orders["morf"].aopc.mean - float(aopc_per_image(morf).mean())) < 1e-6
    slow = slow_curves(as_classifier(user, preprocess="vgg16"), images[:2], maps[:2], sc.region_size, "morf", GaussianNoise(0.1),
                       job.metrics.seed, ids[:2], targets=c.targets[:2])
    np.testing.assert_allclose(c.curves[("file_maps", "morf")][:2], slow, atol=1e-5)


def test_a_metric_that_recomputes_maps_refuses_maps_from_a_file_in_python(tmp_path):
    """evaluate(robustness or randomisation, ..., explainer=FileMaps) would compare fixed maps with themselves: one line instead."""
    from xbench.explain import build
    from xbench.metrics import evaluate

    path = tmp_path / "m.npz"
    np.savez(path, maps=np.ones((2, 16, 16), np.float32), paths=np.array(["a.png", "b.png"]))
    for name in ("max_sensitivity", "random_logit"):
        with pytest.raises(ValueError, match=r"^explainer: .* reads maps made elsewhere and cannot recompute them") as e:
            evaluate(name, None, np.zeros((2, 16, 16, 3), np.float32), np.ones((2, 16, 16)), explainer=build("file", path=str(path)))
        assert "\n" not in str(e.value)
