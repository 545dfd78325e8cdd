"""Same config and seed, same figures: run twice from scratch, and again over a damaged cache."""

import numpy as np
import pytest

from .helpers import JOB, arrays, figures, load_metrics, xbench

pytestmark = pytest.mark.slow


@pytest.fixture()
def second_run(reference, tmp_path):
    r = xbench(JOB + ["hydra.run.dir=again"], tmp_path, tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp_path


def test_a_second_run_from_an_empty_cache_gives_identical_figures(reference, second_run):
    again = second_run / "again"
    assert figures(load_metrics(again)) == figures(load_metrics(reference))
    assert (again / "split.csv").read_text() == (reference / "split.csv").read_text()  # seeded split
    for name in ("test_predictions.npz", "curves.npz", "heatmaps.npz"):
        want, got = arrays(reference, name), arrays(again, name)
        assert want.keys() == got.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}:{k}")

    # The same cache, damaged: every damaged entry is detected and rebuilt.
    tmp_path, cache = second_run, second_run / "cache"
    [model_file] = (cache / "models").glob("*/model.keras")
    model_file.write_bytes(model_file.read_bytes()[:1000])  # truncated zip
    [images] = (cache / "decoded").glob("image-*.npy")
    images.write_bytes(images.read_bytes()[:200])  # truncated array
    for p in list((cache / "heatmaps").glob("*.npy"))[:2] + list((cache / "curves").rglob("*.npy"))[:2]:
        p.write_bytes(b"\x93NUMPY garbage")
    r = xbench(JOB + ["hydra.run.dir=run"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / "run" / "run.log").read_text()
    assert "decoded cache entry" in log and "damaged" in log
    assert "model cache entry" in log and "training again" in log
    assert "heatmap cache file" in log and "curve cache file" in log
    m = load_metrics(tmp_path / "run")
    assert m["training"]["model_cache"]["hit"] is False
    assert m["scoring"]["chunks"]["computed"] == 2 and m["scoring"]["chunks"]["reused"] == 14  # 16 chunks, 2 damaged
    assert figures(m) == figures(load_metrics(reference))
