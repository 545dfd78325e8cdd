"""The paper's AOPC evaluation on one GPU (issue 30): run by docs/tools/gpu_paper_eval.sh, or by hand.

    python docs/tools/gpu_paper_eval.py OUT [--tiny] [--models vgg16,densenet201] [--budget SECONDS]

Measures with xbench's own code (:mod:`xbench.pipeline.speed`), on the active Keras
backend (JAX on the GPU machine), for each model at the paper's 299 px with
34-px regions (``--tiny``: 64 px, 8-px regions, a few images), in float32 and
bfloat16:

- ``bench``: :func:`xbench.pipeline.speed.run_bench` with ``method="auto"`` on a
  subset of random images: raw img/s (the compiled step alone), engine img/s
  for ``auto`` and ``full``, the per-step ``model.predict`` toolkit loop on the
  same subset, their curves' largest difference, TFLOP/s, host RSS;
- ``paper_eval``: the paper's three curves (Grad-CAM MoRF and LeRF, the
  random control's MoRF) over 540 random images with random maps (region
  order depends only on the maps' region sums), 82 points each: 132,840
  forward passes per model, or the first n images when the time left does not
  allow all 540, extrapolated linearly in n (the engine's cost is per pair);
- ``rss_vs_n``: the engine's host-memory peak as N grows (same compiled step);
- device memory (JAX's allocator: the process's peak so far, after each part).

Then it runs the default benchmark (``python -m xbench -m
model=vgg16,densenet201``; ``--tiny``: ``+experiment=smoke``) and reads each
job's metrics.json beside the CPU's figures (docs/example/summary.csv and
docs/performance.md).

Every part runs in its own process with a deadline (the parent kills it at
its deadline and keeps what it had written), so that one slow compile or a
crash costs that part only; the parent itself never starts a backend, so each
child has the GPU to itself. Output: ``OUT/gpu_paper_eval.json`` (one JSON,
rewritten after every part) and progress lines with timestamps on stdout
(the shell script tees them to ``OUT/gpu_paper_eval.log``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
T0 = float(os.environ.setdefault("XBENCH_GPU_EVAL_T0", repr(time.time())))

#: The paper's evaluation: 540 test images, three curves (Grad-CAM MoRF and LeRF, random MoRF).
PAPER_IMAGES, PAPER_ORDERS = 540, ("morf", "lerf", "random")

#: batch_size None: the engine's default (a 1 GiB budget), what a user's scoring gets. --tiny's 13 pairs divide its 65-point
#: curves, so that every part runs one compiled step shape (each new shape compiles on JAX).
FULL = dict(image_size=299, region_size=34, bench_n=32, paper_images=PAPER_IMAGES, rss_n=(16, 64, 256), matmul_n=8192, budget=430.0,
            default_reserve=150.0, peaks_budget=40.0, batch_size=None, default_overrides=())
TINY = dict(image_size=64, region_size=8, bench_n=2, paper_images=3, rss_n=(1, 2, 4), matmul_n=256, budget=600.0,
            default_reserve=120.0, peaks_budget=60.0, batch_size=13, default_overrides=("+experiment=smoke",))

#: The default benchmark on the development CPU (2 cores, TensorFlow backend), docs/performance.md
#: "The default benchmark: what it costs and what we tried" (fresh clone, empty cache).
CPU_DEFAULT_BENCHMARK = {"source": "docs/performance.md (2-core CPU, TensorFlow backend, fresh clone and empty cache)", "wall_s": 12 * 60 + 56,
                         "wall_includes": "pip install 50 s, phantoms 29 s", "job_total_s": {"vgg16": 392, "densenet201": 329},
                         "scoring_s": {"vgg16": 209, "densenet201": 104}}
#: The paper evaluation on that CPU, docs/performance.md "Paper scale on this CPU" (132,840 forward passes at the bench's rates).
CPU_PAPER_EVAL_S = {"vgg16": 33_700, "densenet201": 27_600}


def say(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f} s] {msg}", flush=True)


def save(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


# --------------------------------------------------------------------------- children (one backend each)


def _start_backend() -> dict:
    from xbench.backend.native_logs import start_backend

    start_backend()
    import keras
    import numpy as np

    env = {"keras": keras.__version__, "keras_backend": keras.backend.backend(), "numpy": np.__version__}
    if keras.backend.backend() == "jax":
        import jax

        d = jax.devices()
        env.update(jax=jax.__version__, jax_backend=jax.default_backend(), devices=len(d), device_kind=d[0].device_kind,
                   default_matmul_precision=str(jax.config.jax_default_matmul_precision))
    return env


def part_peaks(args, cfg, out: dict, result: Path) -> None:
    from xbench.pipeline.speed import device_memory, matmul_peak, memory_bandwidth

    out["environment"] = _start_backend()
    save(result, out)
    say(f"backend: {out['environment']}")
    # float32 at JAX's default precision is TensorFloat-32 on the GPU's tensor cores; "highest" is float32 proper.
    for dtype, prec in (("float32", "default"), ("float32", "highest"), ("bfloat16", "default"), ("bfloat16", "highest")):
        with _precision(prec):
            key = f"matmul_{dtype}_tflops" + ("" if prec == "default" else f"_{prec}")
            out[key] = matmul_peak(cfg["matmul_n"], 10, dtype)
        say(f"{cfg['matmul_n']}-square matrix product in {dtype}, precision {prec}: {out[key]:.1f} TFLOP/s")
        save(result, out)
    out["matmul_n"] = cfg["matmul_n"]
    out["host_memory_gbps"] = memory_bandwidth(256, 3)
    out["device_memory"] = device_memory()


def _precision(name: str | None):
    """JAX's matmul and convolution precision for float32 operands (``highest``: float32; ``default``: TensorFloat-32 on a GPU)."""
    import contextlib

    import keras

    if not name or keras.backend.backend() != "jax":
        return contextlib.nullcontext()
    import jax

    return jax.default_matmul_precision(name)


def _keeps_batch(n: int, points: int, batch: int) -> bool:
    from xbench.perturbation.engine import balanced_batch

    return balanced_batch(n * points, batch) == batch


def _same_shape_n(n: int, points: int, batch: int, up: bool = True) -> int:
    """The n nearest to ``n`` (searching up, or down) for which the engine keeps batch ``batch``: no new compiled shape."""
    step = 1 if up else -1
    m = n
    while 1 <= m <= 4 * n + batch and not _keeps_batch(m, points, batch):
        m += step
    return m if 1 <= m and _keeps_batch(m, points, batch) else n


def part_model(args, cfg, out: dict, result: Path) -> None:
    """bench (float32, bfloat16), paper evaluation, host RSS as N grows, for one backbone, within the deadline."""
    import numpy as np

    out["environment"] = _start_backend()
    from xbench.models import build_classifier
    from xbench.models.precision import with_compute_dtype
    from xbench.perturbation import perturbation_curves
    from xbench.perturbation.engine import auto_batch_size, balanced_batch, step_devices
    from xbench.perturbation.incremental import chunk_size, runner
    from xbench.perturbation.regions import grid_shape
    from xbench.pipeline.speed import (
        BenchSettings,
        PeakRSS,
        device_memory,
        run_bench,
        warm_step,
    )

    deadline, backbone, S, P = args.deadline, args.backbone, cfg["image_size"], cfg["region_size"]
    # float32 runs at --float32-precision; bfloat16 at JAX's default (its float32 reference inside run_bench too).
    prec = lambda dtype: args.float32_precision if dtype == "float32" else None
    left = lambda: deadline - time.time()
    notes = out.setdefault("notes", [])
    t = time.time()
    model32 = build_classifier(backbone, 4, S, weights="none", seed=0)
    rows, cols = grid_shape(S, S, P)
    L = rows * cols
    d = step_devices(model32)
    B = math.ceil((args.batch_size or cfg["batch_size"] or auto_batch_size(model32, 1024)) / d) * d  # default: the engine's 1 GiB budget
    n_bench = _same_shape_n(cfg["bench_n"], L + 1, B)
    out.update(backbone=backbone, image_size=S, region_size=P, regions=L, curve_points=L + 1, batch_size=B, bench_n=n_bench, build_s=time.time() - t,
               device_memory_after_build=device_memory())
    say(f"{backbone}: built in {out['build_s']:.1f} s; batch {B} pairs, bench on {n_bench} images x {L + 1} points; {left():.0f} s left")
    save(result, out)

    bench, paper = out.setdefault("bench", {}), out.setdefault("paper_eval", {})
    rng = np.random.default_rng(1)
    rss_reserve = 0.12 * (deadline - T_START) if args.rss else 0.0
    for i, dtype in enumerate(args.dtypes):  # each dtype's bench, then its paper evaluation: the first dtype's figures are complete first
        later = len(args.dtypes) - i - 1
        took = max([v["wall_s"] for v in bench.values()], default=0.0)
        if left() < 1.3 * took:  # the previous bench's time, compiles included, is the estimate
            notes.append(f"bench {dtype} skipped: {left():.0f} s left, the previous bench took {took:.0f} s")
            say(notes[-1])
            continue
        t = time.time()
        with _precision(prec(dtype)):
            r, _ = run_bench(BenchSettings(backbone, S, n_bench, P, batch_size=B, dtype=dtype, toolkit=True, method="auto"), model=model32)
        r.pop("per_layer_gflop", None)
        r.update(wall_s=time.time() - t, device_memory=device_memory(), float32_precision=prec("float32"), precision=prec(dtype) or "default")
        bench[dtype] = r
        save(result, out)
        say(f"{backbone} {dtype} bench ({r['wall_s']:.1f} s with compiles): raw {r['raw_images_per_s']:.0f} img/s, engine auto ({r.get('method_used')}) "
            f"{r['engine_images_per_s']:.0f}, full {r['forward_passes'] / r['full_engine_s']:.0f}, toolkit {r['toolkit_images_per_s']:.0f} img/s; "
            f"max |engine - toolkit| {r['max_abs_diff_engine_toolkit']:.2e}; device memory {r['device_memory']}")

        # The paper's evaluation: 3 curves x n images x (L + 1) points, the engine as scoring runs it.
        full_s, engine_s = r["full_engine_s"], r["engine_s"]
        method = "auto" if r.get("method_used") == "incremental" and engine_s < 0.95 * full_s else "full"
        rate = r["forward_passes"] / (engine_s if method == "auto" else full_s)
        per_image = len(PAPER_ORDERS) * (L + 1)
        spare = left() - rss_reserve
        budget = (spare - later * 1.3 * r["wall_s"]) / (later + 1)  # later dtypes: a bench like this one, and their share
        if budget < 5:  # no room for a later dtype's bench as well: this paper evaluation comes first
            budget = spare
        n = min(cfg["paper_images"], max(1, int(0.7 * budget * rate / per_image)))  # 0.7: compile and the images' making
        if n < cfg["paper_images"]:
            n = _same_shape_n(n, L + 1, B, up=False)
        if budget < 5:
            notes.append(f"paper_eval {dtype} skipped: {left():.0f} s left")
            say(notes[-1])
            continue
        say(f"{backbone} {dtype} paper evaluation: {n} of {cfg['paper_images']} images x {per_image} forward passes, method {method} "
            f"(bench rate {rate:.0f} img/s, budget {budget:.0f} s)")
        t = time.time()
        images = rng.random((n, S, S, 3), dtype=np.float32)
        heat = rng.random((n, S, S), dtype=np.float32)
        model = with_compute_dtype(model32, dtype)
        with _precision(prec(dtype)):
            if method == "full":  # compile the step at this run's shapes, outside the timing
                warm_step(model, math.ceil(balanced_batch(n * (L + 1), B) / d) * d, L + 1, S)
            else:  # the incremental steps compile per chunk of images
                g = chunk_size(runner(model, S, S, P), n, 1024)
                perturbation_curves(model, images[:g], heat[:g], region_size=P, max_steps=1, method=method)
            prep_s = time.time() - t
            per_order, rss = {}, {}
            t0 = time.perf_counter()
            for order in PAPER_ORDERS:
                t1 = time.perf_counter()
                with PeakRSS() as mem:
                    perturbation_curves(model, images, heat, region_size=P, order=order, batch_size=None if method != "full" else B, method=method)
                per_order[order], rss[order] = time.perf_counter() - t1, mem.delta / 2**20
            wall = time.perf_counter() - t0
        paper[dtype] = {"images": n, "paper_images": cfg["paper_images"], "complete": n == cfg["paper_images"], "orders": list(PAPER_ORDERS),
                        "forward_passes": n * per_image, "paper_forward_passes": cfg["paper_images"] * per_image, "method": method, "batch_size": B,
                        "seconds": wall, "seconds_per_order": per_order, "images_per_s": n * per_image / wall,
                        "paper_seconds": wall * cfg["paper_images"] / n, "extrapolated": n != cfg["paper_images"],
                        "warm_and_inputs_s": prep_s, "peak_rss_delta_mib_per_order": rss, "inputs_mib": (images.nbytes + heat.nbytes) / 2**20,
                        "tflops": n * per_image * r["gflop_per_image"] / wall / 1e3, "device_memory": device_memory(),
                        "precision": prec(dtype) or "default",
                        "inputs": "random images in [0, 1) and random maps (the region order depends only on the maps' region sums)"}
        del images, heat
        save(result, out)
        p = paper[dtype]
        say(f"{backbone} {dtype} paper evaluation: {p['forward_passes']} forward passes in {wall:.1f} s ({p['images_per_s']:.0f} img/s, "
            f"{p['tflops']:.1f} TFLOP/s); all {cfg['paper_images']} images: {p['paper_seconds']:.1f} s" + (" (extrapolated)" if p["extrapolated"] else ""))

    # Host memory as N grows: the engine's peak RSS above its start, same compiled step (float32, full), N growing 16x.
    if not args.rss:
        return
    rss_rows = out.setdefault("rss_vs_n", [])
    dtype = "float32" if "float32" in bench else next(iter(bench), args.dtypes[0])
    model = with_compute_dtype(model32, dtype)
    # Points per curve with the bench's image slots (no new compile), as few as that allows.
    K = next(k for k in range(1, L + 1) if math.ceil(B / (k + 1)) == math.ceil(B / (L + 1)))
    rate = bench[dtype]["forward_passes"] / bench[dtype]["full_engine_s"] if dtype in bench else None
    with _precision(prec(dtype)):  # a first call at these shapes allocates what every later call re-uses: not part of the sweep
        w = _same_shape_n(1, K + 1, B)
        perturbation_curves(model, np.zeros((w, S, S, 3), np.float32), rng.random((w, S, S)), region_size=P, max_steps=K, batch_size=B, method="full")
    for n in cfg["rss_n"]:
        n = _same_shape_n(n, K + 1, B)
        if rate and n * (K + 1) / rate > 0.8 * left():
            notes.append(f"rss_vs_n stopped before n={n}: {left():.0f} s left")
            say(notes[-1])
            break
        images = rng.random((n, S, S, 3), dtype=np.float32)
        heat = rng.random((n, S, S), dtype=np.float32)
        t = time.perf_counter()
        with _precision(prec(dtype)), PeakRSS() as mem:
            perturbation_curves(model, images, heat, region_size=P, max_steps=K, batch_size=B, method="full")
        rss_rows.append({"n": n, "points": K + 1, "forward_passes": n * (K + 1), "dtype": dtype, "seconds": time.perf_counter() - t,
                         "peak_rss_delta_mib": mem.delta / 2**20, "inputs_mib": (images.nbytes + heat.nbytes) / 2**20})
        say(f"{backbone} rss_vs_n: n={n}, {K + 1} points: peak RSS +{mem.delta / 2**20:.1f} MiB (inputs {rss_rows[-1]['inputs_mib']:.1f} MiB)")
        save(result, out)
    out["device_memory_end"] = device_memory()


# --------------------------------------------------------------------------- the parent


def _run_child(argv: list, deadline: float, result: Path, grace: float = 15.0) -> tuple[dict, str]:
    """Run a part in its own process until ``deadline`` (+ grace); its result file, whatever it had written, and how it ended."""
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), *argv, "--result", str(result), "--deadline", repr(deadline)]
    try:
        rc = subprocess.run(cmd, timeout=max(1.0, deadline - time.time() + grace)).returncode
        ended = "ok" if rc == 0 else f"exit status {rc}"
    except subprocess.TimeoutExpired:
        ended = "killed at its deadline"
    data = json.loads(result.read_text()) if result.exists() else {}
    return data, ended


def _cpu_summary() -> dict:
    """The default benchmark's figures on the CPU (docs/example/summary.csv: seed 0, the README's table)."""
    rows = {}
    path = ROOT / "docs" / "example" / "summary.csv"
    if not path.exists():
        return rows
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["explainer"] == "gradcam":
                rows[r["model"]] = {k: (float(r[k]) if r[k] not in ("", None) else None) for k in
                                    ("test_macro_recall", "aopc", "aopc_ci_low", "aopc_ci_high", "abpc", "aopc_random", "aopc_gain_over_random",
                                     "gain_ci_low", "gain_ci_high", "lesion_mass", "images_scored")}
    return rows


def _job_figures(metrics: dict) -> dict:
    sc = metrics.get("scoring") or {}
    methods = sc.get("methods") or {}

    def aopc(method, order):
        a = (((methods.get(method) or {}).get("orders") or {}).get(order) or {}).get("aopc") or {}
        return {"mean": a.get("mean"), "ci95": a.get("ci95"), "n": a.get("n")} if a else None

    return {"model": (metrics.get("model") or {}).get("backbone"), "scored": bool(methods), "keras_backend": metrics.get("keras_backend"),
            "keras_version": metrics.get("keras_version"), "timings": metrics.get("timings"),
            "test_macro_recall": ((metrics.get("test") or {}).get("macro_avg") or {}).get("recall"), "n_scored": sc.get("n_scored"),
            "grid": sc.get("grid"), "steps": sc.get("steps"), "engine": sc.get("engine"), "dtype": sc.get("dtype"), "scoring_s": sc.get("seconds"),
            "aopc_gradcam_morf": aopc("gradcam", "morf"), "aopc_gradcam_lerf": aopc("gradcam", "lerf"), "aopc_random_morf": aopc("random", "morf"),
            "aopc_oracle_morf": aopc("oracle", "morf"), "gains_over_random": sc.get("gains_over_random"), "methods": sorted(methods)}


def default_benchmark(args, cfg, deadline: float, work: Path) -> dict:
    sweep = work / "multirun"
    cmd = [sys.executable, "-m", "xbench", "-m", f"model={','.join(args.models)}", *cfg["default_overrides"], f"hydra.sweep.dir={sweep}"]
    shown = "python -m xbench -m " + " ".join(cmd[4:-1])
    out = {"command": shown, "xbench_cache": "fresh (phantoms written and decoded in the timed run)", "cpu": CPU_DEFAULT_BENCHMARK}
    if not (ROOT / "xbench" / "conf").exists():
        out["error"] = "xbench/conf is missing: link it (ln -s ../conf xbench/conf) or pip install the package"
        return out
    env = {**os.environ, "XBENCH_CACHE": str(work / "cache"), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    say(f"default benchmark: {shown} (until {deadline - T0:.0f} s)")
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, start_new_session=True)  # its own group: the phantom workers go with it
    try:
        rc = proc.wait(timeout=max(1.0, deadline - time.time()))
        out["ended"] = "ok" if rc == 0 else f"exit status {rc}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        out["ended"] = "killed at its deadline"
    out["wall_s"] = time.perf_counter() - t
    cpu = _cpu_summary()
    jobs = []
    for m in sorted(sweep.glob("*/metrics.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0):
        j = _job_figures(json.loads(m.read_text()))
        j["job"] = m.parent.name
        j["cpu_seed0"] = cpu.get(j["model"]) if not cfg["default_overrides"] else None  # the smoke overlay has no CPU counterpart
        jobs.append(j)
    out["jobs"] = jobs
    out["jobs_expected"] = len(args.models)
    if jobs:  # the report reads what the jobs wrote, on this machine's Python (JAX, no TensorFlow)
        t = time.perf_counter()
        rep = subprocess.run([sys.executable, "-m", "xbench.apps.report", str(sweep), "--out", str(work / "report")], cwd=work, env=env,
                             capture_output=True, text=True, timeout=max(1.0, deadline - time.time()))
        csv_path = work / "report" / "summary.csv"
        out["report"] = {"ended": "ok" if rep.returncode == 0 else f"exit status {rep.returncode}: {rep.stderr[-500:]}", "wall_s": time.perf_counter() - t,
                         "summary_rows": sum(1 for _ in open(csv_path)) - 1 if csv_path.exists() else 0}
    say(f"default benchmark: {out['ended']} in {out['wall_s']:.1f} s; {sum(j['scored'] for j in jobs)} of {len(args.models)} jobs scored "
        f"({len(jobs)} wrote metrics.json)")
    for j in jobs:
        a = j["aopc_gradcam_morf"] or {}
        c = j["cpu_seed0"] or {}
        say(f"  {j['model']}: recall {j['test_macro_recall']}, Grad-CAM MoRF AOPC {a.get('mean')} {a.get('ci95')} (CPU: {c.get('aopc')}), "
            f"job {(j['timings'] or {}).get('total_s')} s")
    return out


def targets(report: dict) -> dict:
    """The issue's targets, read off the figures (None where a figure is missing)."""
    out = {}
    for bb, m in report["models"].items():
        for dt, r in (m.get("bench") or {}).items():
            full = r["forward_passes"] / r["full_engine_s"]
            out[f"{bb}/{dt}/engine_full_over_raw>=0.9"] = full / r["raw_images_per_s"]
            out[f"{bb}/{dt}/engine_over_toolkit>=5"] = r["toolkit_s"] / min(r["engine_s"], r["full_engine_s"])
        rows = m.get("rss_vs_n") or []
        if len(rows) > 1:
            out[f"{bb}/rss_growth_mib_from_n={rows[0]['n']}_to_n={rows[-1]['n']}"] = rows[-1]["peak_rss_delta_mib"] - rows[0]["peak_rss_delta_mib"]
    for dt in ("bfloat16", "float32"):
        s = [m.get("paper_eval", {}).get(dt, {}).get("paper_seconds") for m in report["models"].values()]
        out[f"paper_eval_all_models_s/{dt}<60"] = sum(s) if s and all(v is not None for v in s) else None
    return out


def parent(args, cfg) -> int:
    global T_START
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="xbench-gpu-eval-"))
    if args.work and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    final = out_dir / "gpu_paper_eval.json"
    end = T_START + cfg["budget"]
    report = {"issue": 30, "mode": "tiny" if args.tiny else "paper", "started_unix": T_START, "budget_s": cfg["budget"],
              "commands": {"script": os.environ.get("XBENCH_GPU_EVAL_CMD"), "driver": " ".join([Path(sys.executable).name, *sys.argv]),
                           "device_run": "the device tool's run, carry ['.whl']: bash docs/tools/gpu_paper_eval.sh $OUT"}, "settings": {**cfg, "models": args.models, "dtypes": args.dtypes},
              "python": platform.python_version(), "platform": platform.platform(), "git_commit": _git_commit(), "notes": [], "models": {},
              "cpu_paper_eval_s": CPU_PAPER_EVAL_S, "cpu_paper_eval_source": "docs/performance.md, Paper scale on this CPU (the bench's rates)"}
    save(final, report)
    say(f"xbench GPU evaluation, {report['mode']} mode, budget {cfg['budget']:.0f} s; models {args.models}, dtypes {args.dtypes}; work in {work}")

    peaks, ended = _run_child(["--part", "peaks", *_common(args)], min(end, time.time() + cfg["peaks_budget"]), work / "peaks.json")
    report["peaks"] = peaks
    report["environment"] = peaks.get("environment", {})
    report["peaks_ended"] = ended
    save(final, report)
    env = report["environment"]
    if not args.tiny and env.get("jax_backend") != "gpu":
        why = peaks.get("error") or f"the backend is {env.get('keras_backend')}/{env.get('jax_backend')}, not a GPU"
        report["notes"].append(f"stopped after the first part ({ended}): {why}")
        say(report["notes"][-1])
        save(final, report)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        return 2

    for i, bb in enumerate(args.models):
        share = (end - cfg["default_reserve"] - time.time()) / (len(args.models) - i)
        say(f"{bb}: until {time.time() + share - T0:.0f} s")
        r, ended = _run_child(["--part", "model", "--backbone", bb, *_common(args), *(["--rss"] if i == 0 else [])], time.time() + share,
                              work / f"{bb}.json")
        r["ended"] = ended
        report["models"][bb] = r
        peak = report["peaks"].get("matmul_bfloat16_tflops")
        for key in ("bench", "paper_eval"):
            for v in (r.get(key) or {}).values():
                tf = v.get("engine_tflops", v.get("tflops"))
                if peak and tf is not None:
                    v["tflops_over_bf16_matmul"] = tf / peak
        save(final, report)
        say(f"{bb}: {ended}")

    if args.default_benchmark:
        report["default_benchmark"] = default_benchmark(args, cfg, end, work)
        report["commands"]["default_benchmark"] = report["default_benchmark"]["command"]
    report["targets"] = targets(report)
    report["wall_s"] = time.time() - T0
    save(final, report)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    say(f"done in {report['wall_s']:.1f} s: {final}")
    for k, v in report["targets"].items():
        say(f"  target {k}: {v if v is None else round(v, 3)}")
    return 0


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _common(args) -> list:
    return [*(["--tiny"] if args.tiny else []), "--dtypes", ",".join(args.dtypes), *(["--batch-size", str(args.batch_size)] if args.batch_size else []),
            "--float32-precision", args.float32_precision, *(["--image-size", str(args.image_size)] if args.image_size else []),
            *(["--region-size", str(args.region_size)] if args.region_size else [])]


def main(argv=None) -> int:
    global T_START
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="output folder: gpu_paper_eval.json")
    p.add_argument("--tiny", action="store_true", help="64 px, 8-px regions, a few images, the smoke overlay: minutes on a CPU")
    p.add_argument("--models", default=None, help="default vgg16,densenet201; --tiny: vgg16 (DenseNet201's smoke job alone takes minutes on "
                                                   "XLA:CPU: --tiny --models vgg16,densenet201 checks it too)")
    p.add_argument("--dtypes", default="bfloat16,float32", help="in this order: each dtype's bench, then its paper evaluation")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 430; --tiny 600)")
    p.add_argument("--batch-size", type=int, default=None, help="(image, step) pairs per forward pass (default: the engine's 1 GiB budget)")
    p.add_argument("--float32-precision", default="highest", choices=("highest", "default"),
                   help="JAX precision of float32 matrix products and convolutions (default: highest, i.e. float32; "
                        "'default' lets the GPU use TensorFloat-32). The default benchmark runs as a user's job does (JAX's default)")
    p.add_argument("--image-size", type=int, default=None, help="instead of 299 (--tiny: 64)")
    p.add_argument("--region-size", type=int, default=None, help="instead of 34 (--tiny: 8)")
    p.add_argument("--default-overrides", default="", help="extra overrides for the default benchmark, space-separated (e.g. plots=false)")
    p.add_argument("--no-default-benchmark", dest="default_benchmark", action="store_false")
    p.add_argument("--work", default=None, help="scratch folder, kept (default: a temporary one, removed at the end); the parts' results and "
                                                "the default benchmark's runs and cache go there")
    p.add_argument("--part", choices=("peaks", "model"), help=argparse.SUPPRESS)
    p.add_argument("--backbone", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--rss", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m for m in (args.models or ("vgg16" if args.tiny else "vgg16,densenet201")).split(",") if m]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    cfg = dict(TINY if args.tiny else FULL)
    if args.budget:
        cfg["budget"] = args.budget
    for key in ("image_size", "region_size"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
    cfg["default_overrides"] = (*cfg["default_overrides"], *args.default_overrides.split())
    cfg["float32_precision"] = args.float32_precision
    sys.path.insert(0, str(ROOT))
    T_START = time.time()
    if args.part is None:
        if not args.out:
            p.error("the output folder is required")
        return parent(args, cfg)
    result = Path(args.result)
    out: dict = {"part": args.part, "started_s": time.time() - T0}
    try:
        if args.part == "peaks":
            part_peaks(args, cfg, out, result)
        else:
            part_model(args, cfg, out, result)
    except Exception as exc:  # noqa: BLE001 - the parent records what failed and goes on
        import traceback

        out["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        save(result, out)
        return 1
    out["wall_s"] = time.time() - T_START
    save(result, out)
    return 0


T_START = time.time()

if __name__ == "__main__":
    sys.exit(main())
