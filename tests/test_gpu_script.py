"""docs/tools/gpu_paper_eval.sh (issue 30) with --tiny on this CPU, TensorFlow unimportable as on the GPU machine: the JSON it writes.

The GPU run measures the same parts at 299 px; here every part runs at 64 px
(16-px regions, a few images) and the default benchmark with the smoke
overlay, so that what a GPU's minutes would find broken is found here.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import jax_env

pytest.importorskip("jax")
pytestmark = [pytest.mark.slow, pytest.mark.heavy]

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_evaluation_script_runs_tiny_on_a_cpu_without_tensorflow(tmp_path):
    out = tmp_path / "out"
    env = {**jax_env(fast_compile=False), "PYTHON": sys.executable}  # it trains and benches: XLA's default level, as on the GPU
    env.pop("XBENCH_GPU_EVAL_T0", None)
    cmd = ["bash", str(ROOT / "docs" / "tools" / "gpu_paper_eval.sh"), str(out), "--tiny", "--no-install", "--block-tensorflow", "--models", "vgg16",
           "--region-size", "16", "--default-overrides", "plots=false score.region_size=8"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_paper_eval.json", "gpu_paper_eval.log"]  # what comes back from the device: two files
    log = (out / "gpu_paper_eval.log").read_text()
    assert "tensorflow blocked" in log and "done in" in log
    rep = json.loads((out / "gpu_paper_eval.json").read_text())
    assert rep["mode"] == "tiny" and rep["wall_s"] > 0 and not rep["notes"]
    assert rep["environment"]["keras_backend"] == "jax" and rep["environment"]["jax"]
    assert rep["peaks"]["matmul_float32_tflops"] > 0 and rep["peaks"]["matmul_bfloat16_tflops"] > 0

    m = rep["models"]["vgg16"]
    assert m["ended"] == "ok" and not m.get("notes") and m["regions"] == 16 and m["curve_points"] == 17
    for dtype in ("float32", "bfloat16"):
        b = m["bench"][dtype]
        assert b["dtype"] == dtype and b["steps"] == 16 and b["forward_passes"] == b["n"] * (16 + 1) == m["bench_n"] * 17
        assert min(b["raw_images_per_s"], b["engine_images_per_s"], b["toolkit_images_per_s"], b["full_engine_s"], b["wall_s"]) > 0
        assert "device_memory" in b and b["device_memory"] is None  # JAX on a CPU keeps no allocator statistics
        assert b["tflops_over_bf16_matmul"] > 0 and b["curves_std"] > 1e-3  # the curves move, so their equality means something
        p = m["paper_eval"][dtype]
        assert p["complete"] and p["images"] == p["paper_images"] == 3 and p["orders"] == ["morf", "lerf", "random"]
        assert p["forward_passes"] == p["images"] * 3 * 17 and p["seconds"] > 0 and p["paper_seconds"] == pytest.approx(p["seconds"])
        assert all(v > 0 for v in p["seconds_per_order"].values())
    f32 = m["bench"]["float32"]
    # The engine's curves are the toolkit loop's. 1e-4, not 1e-5: on XLA:CPU an image's probabilities depend on the
    # batch it is computed in (9e-6 between batches of 1 and 13 at 64 px; 3.8e-5 on 8-px-region curves), which
    # oneDNN under TensorFlow does not show (tests/test_bench.py asserts 1e-5 there).
    assert f32["max_abs_diff_engine_toolkit"] < 1e-4 and f32["max_abs_diff_full_engine_toolkit"] < 1e-4
    assert f32["precision"] == "highest" and m["bench"]["bfloat16"]["precision"] == "default"
    rows = m["rss_vs_n"]
    assert [x["n"] for x in rows] == [1, 2, 4] and all(x["forward_passes"] == x["n"] * x["points"] for x in rows)
    assert all(math.isfinite(x["peak_rss_delta_mib"]) for x in rows)

    d = rep["default_benchmark"]
    assert d["ended"] == "ok" and d["wall_s"] > 0 and d["jobs_expected"] == len(d["jobs"]) == 1
    job = d["jobs"][0]
    assert job["model"] == "vgg16" and job["keras_backend"] == "jax" and job["timings"]["total_s"] > 0 and job["n_scored"] >= 1
    assert job["grid"] == [4, 4] and math.isfinite(job["aopc_gradcam_morf"]["mean"]) and math.isfinite(job["aopc_random_morf"]["mean"])
    assert set(job["methods"]) >= {"gradcam", "random", "oracle"}
    assert d["report"]["ended"] == "ok" and d["report"]["summary_rows"] == 1  # xbench-report on the JAX-only machine too
    assert d["cpu"]["wall_s"] == 776 and job["cpu_seed0"] is None  # the smoke overlay has no CPU counterpart
    t = rep["targets"]
    assert t["vgg16/float32/engine_full_over_raw>=0.9"] > 0 and t["paper_eval_all_models_s/float32<60"] == pytest.approx(m["paper_eval"]["float32"]["paper_seconds"])
