"""``xbench-bench``: the perturbation engine against its ceiling (raw) and the toolkit loop; ``--leakage``: ROAD's mask-leakage check on phantoms; ``--explainers``: maps per second."""

from __future__ import annotations

import argparse
import json
import os
import sys

from xbench.perturbation.regions import ORDERS  # pure NumPy: no backend starts here

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _table(rows) -> str:
    cols = ["backbone", "image_size", "n", "order", "regions", "steps", "batch_size", "dtype", "forward_passes", "raw_images_per_s", "engine_images_per_s",
            "engine_over_raw", "toolkit_images_per_s", "engine_over_toolkit", "engine_tflops", "engine_peak_rss_delta_mb", "max_abs_diff_engine_toolkit",
            "max_abs_diff_vs_float32", "max_abs_aopc_diff_vs_float32", "engine_over_gaussian", "method", "method_used", "flop_ratio", "predicted_speedup",
            "chunk_images", "state_mb_per_image", "engine_over_full", "max_abs_diff_vs_full"]
    cols = [c for c in cols if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _leakage_table(out) -> str:
    from xbench.metrics.bootstrap import format_interval

    est = lambda mean, v, n: format_interval(mean, v[0], v[1], n)  # "mean [n too small]" below the minimum
    lines = [f"mask leakage: {out['n']} phantoms at {out['image_size']} px, {out['region_size']}-px regions, {out['epochs']} epochs, seed {out['seed']} "
             f"({out['keras_backend']}); AUC 0.5 = the mask cannot be read off the image",
             "| perturbation | mask AUC per image [95% CI] | pooled pixel AUC | image AUC [95% CI] | n train/test | train s |", "|---|---|---|---|---|---|"]
    for name, r in out["results"].items():
        lines.append(f"| {name} | {est(r['mask_auc_per_image'], r['mask_auc_ci'], r['n_test'])} | {r['mask_auc']:.3f} | "
                     f"{est(r['image_auc'], r['image_auc_ci'], r['n_test'])} | "
                     f"{r['n_train']}/{r['n_test']} | {r['train_seconds']:.1f} |")
    lines.append(f"total {out['total_s']:.1f} s")
    return "\n".join(lines)


def _explainer_table(rows) -> str:
    lines = ["| explainer | backbone | px | n | backend | maps/s | first call s | tf-keras-vis maps/s | native / tf-keras-vis |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tk = (f"{r['tfkv_maps_per_s']:.3g}", f"{r['native_over_tfkv']:.2f}x") if "tfkv_maps_per_s" in r else ("", "")
        lines.append(f"| {r['explainer']} | {r['backbone']} | {r['image_size']} | {r['n']} | {r['keras_backend']} | {r['maps_per_s']:.3g} | "
                     f"{r['first_s']:.1f} | {tk[0]} | {tk[1]} |")
    return "\n".join(lines)


def _masked_table(rows) -> str:
    lines = ["| name | backbone | px | n | backend | passes | batch | seconds | passes/s | raw passes/s | vs raw | vs full | first call s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        full = f"{r['over_full']:.2f}x" if "over_full" in r else ""
        lines.append(f"| {r['name']} | {r['backbone']} | {r['image_size']} | {r['n']} | {r['keras_backend']} | {r['passes']} | {r['batch_size']} | "
                     f"{r['seconds']:.2f} | {r['passes_per_s']:.3g} | {r['raw_passes_per_s']:.3g} | {r['over_raw']:.2f}x | {full} | {r['first_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="xbench-bench", description=__doc__)
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--n", type=int, default=None, help="images (default 64; 128 with --leakage)")
    p.add_argument("--region-size", type=int, default=8)
    from xbench.perturbation.perturbations import PERTURBATIONS

    p.add_argument("--order", default="morf", choices=ORDERS,
                   help="region order, or the pixel orders deletion / insertion (Petsiuk et al. 2018)")
    p.add_argument("--perturbation", default="gaussian", choices=tuple(PERTURBATIONS),
                   help="road: in-distribution removal (Rong et al., 2022); its time against gaussian's is reported as engine_over_gaussian")
    p.add_argument("--batch-size", type=int, default=None, help="(image, step) pairs per forward pass (default: from a 1 GiB budget)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="precision of the forward passes (score.dtype); the curves are compared with float32's")
    p.add_argument("--max-steps", type=int, default=None, help="stop region curves after this many steps (default: all regions; pixel orders run to 100%%)")
    p.add_argument("--pixel-steps", type=int, default=None, help="deletion / insertion: steps requested (default: as many as regions)")
    p.add_argument("--insertion-blur", type=float, default=5.0, help="insertion: sigma in px of the blurred start (RISE: 5)")
    p.add_argument("--method", default="full", choices=("full", "incremental", "auto"),
                   help="the engine's method (score.method): incremental keeps each image's activations and recomputes only the windows a "
                        "step's region reaches; auto takes it where it needs enough fewer FLOPs. Not full: the full engine is timed too "
                        "(engine_over_full), with the chunk of images the 1 GiB budget holds and each image's stored activations")
    p.add_argument("--sweep-n", default="", help="comma-separated N values, e.g. 64,128,256,512 (engine only)")
    p.add_argument("--training", action="store_true", help="also time frozen-backbone training: cached features vs plain fit")
    p.add_argument("--no-toolkit", action="store_true", help="skip the toolkit_loop path")
    p.add_argument("--peaks", action="store_true", help="also measure the matrix-product peak and memory bandwidth")
    p.add_argument("--repeats", type=int, default=1, help="alternate raw and engine this many times and keep the best of each")
    p.add_argument("--leakage", action="store_true",
                   help="instead: ROAD's mask-leakage check (Rong et al., 2022) on phantoms: can a small net recover the removal mask from the perturbed image?")
    p.add_argument("--epochs", type=int, default=50, help="--leakage: training epochs of the mask net")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--explainers", default="", help="time these explainers instead (comma-separated, or 'all'): maps per second on --backbone "
                   "at --image-size, --n images (default 16), beside tf-keras-vis where it has the method")
    p.add_argument("--masked", default="", help="time the mask-program engine's explainers and metrics instead (comma-separated, or 'all'): "
                   "each against the raw forward-pass ceiling for its number of passes, --n images (default 4), --batch-size pairs (default 64); "
                   "Occlusion's window: --region-size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.pixel_steps is not None and a.pixel_steps < 1:
        p.error("--pixel-steps must be >= 1")
    from xbench.backend.native_logs import start_backend

    start_backend()  # the backend's machine-dependent start-up lines stay off the console
    if a.explainers:
        from xbench.explain import EXPLAINERS
        from xbench.pipeline.speed import SPEED_EXPLAINERS, explainer_speed

        names = SPEED_EXPLAINERS if a.explainers == "all" else tuple(v for v in a.explainers.split(",") if v)
        unknown = [v for v in names if v not in EXPLAINERS]
        if unknown:
            p.error(f"--explainers: no explainer {unknown[0]!r}; choose from {', '.join(EXPLAINERS)} or 'all'")
        try:
            rows = explainer_speed(a.backbone, a.image_size, a.n or 16, names, seed=a.seed)
        except ValueError as exc:
            print(f"xbench-bench: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"explainers": rows}) if a.json else _explainer_table(rows))
        return 0
    if a.masked:
        from xbench.pipeline.speed import MASKED_SETTINGS, masked_speed

        names = tuple(MASKED_SETTINGS) if a.masked == "all" else tuple(v for v in a.masked.split(",") if v)
        unknown = [v for v in names if v not in MASKED_SETTINGS]
        if unknown:
            p.error(f"--masked: no {unknown[0]!r}; choose from {', '.join(MASKED_SETTINGS)} or 'all'")
        try:
            rows = masked_speed(a.backbone, a.image_size, a.n or 4, names, batch_size=a.batch_size or 64, seed=a.seed, patch=a.region_size)
        except ValueError as exc:
            print(f"xbench-bench: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"masked": rows}) if a.json else _masked_table(rows))
        return 0
    if a.leakage:
        from xbench.pipeline.speed import leakage_bench

        try:
            out = leakage_bench(a.image_size, a.n or 128, a.region_size, a.seed, a.epochs)
        except ValueError as exc:
            print(f"xbench-bench: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"leakage": out}) if a.json else _leakage_table(out))
        return 0
    a.n = 64 if a.n is None else a.n
    from xbench.pipeline.speed import (
        BenchSettings,
        matmul_peak,
        memory_bandwidth,
        run_bench,
    )

    s = BenchSettings(a.backbone, a.image_size, a.n, a.region_size, a.order, a.perturbation, a.batch_size, a.dtype, not a.no_toolkit, seed=a.seed,
                      max_steps=a.max_steps, repeats=a.repeats, pixel_steps=a.pixel_steps, insertion_blur=a.insertion_blur, method=a.method)
    try:
        result, _ = run_bench(s)
    except ValueError as exc:
        print(f"xbench-bench: error: {exc}", file=sys.stderr)
        return 2
    out = {"main": result}
    if a.sweep_n:
        from xbench.models import build_classifier
        from xbench.models.backbones import NO_WEIGHTS

        model = build_classifier(a.backbone, 4, a.image_size, weights=NO_WEIGHTS)
        out["sweep"] = []
        for n in [int(v) for v in a.sweep_n.split(",") if v]:
            r, _ = run_bench(BenchSettings(a.backbone, a.image_size, n, a.region_size, a.order, a.perturbation, a.batch_size, a.dtype, False, max_steps=a.max_steps,
                                           pixel_steps=a.pixel_steps, insertion_blur=a.insertion_blur), model=model)
            out["sweep"].append(r)
    if a.training:
        from xbench.pipeline.speed import training_speed

        out["training"] = training_speed(a.backbone, a.image_size)
    if a.peaks:
        out["matmul_tflops"] = matmul_peak()
        out["memory_gbps"] = memory_bandwidth()
    if a.json:
        print(json.dumps(out))
    else:
        print(_table([out["main"]] + out.get("sweep", [])))
        m = out["main"]
        if "per_layer_gflop" in m:
            print(f"\nincremental: {m['method_used']} ran; windows end at {m['windows_end_at']}; {m['chunk_images']} images per chunk "
                  f"({m['state_mb_per_image']:.1f} MB of stored activations each, 1 GiB budget); GFLOP per image-step, full vs windowed "
                  f"(the windows' fixed size, averaged over regions):")
            print("| layer | full | windowed |\n|---|---|---|")
            for name, full, win in m["per_layer_gflop"]:
                print(f"| {name} | {full:.4g} | {win:.4g} |")
        if a.training:
            t = out["training"]
            print(f"\ntraining, frozen backbone: {t['features_epoch_s']:.3f} s/epoch on cached features vs {t['plain_epoch_s']:.3f} s/epoch plain fit "
                  f"({t['epoch_speedup']:.1f}x; one-off feature extraction {t['feature_extraction_s']:.2f} s)")
            print(f"wall time per epoch on cached features, with fit start-up: {t['features_wall_epoch_s']:.3f} s; "
                  f"with per-epoch resume checkpoints: {t['features_checkpointed_wall_epoch_s']:.3f} s")
        if a.peaks:
            print(f"\nmatrix-product peak {out['matmul_tflops']:.3f} TFLOP/s; memory copy {out['memory_gbps']:.1f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
