"""The Streamlit pages of ``xbench-view`` (run by ``streamlit run``; see :mod:`xbench.apps.view`).

Pages: Summary (the report's tables and plots, CSV downloads), Gallery (one
job's scored images with their maps, filtered and sorted), Image (one image:
maps, curves, figures and the perturbed image at any step) and Compare (one
image under two jobs or methods). Everything read is cached per file
(keyed by the file's modification time), so a page opens from memory after
its first load. Reading goes through :mod:`xbench.pipeline.view_data` only.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from xbench.apps.view import FOLDERS_ENV
from xbench.metrics.bootstrap import MIN_UNITS
from xbench.pipeline import results
from xbench.pipeline import view_data as V

PAGES = ("Summary", "Gallery", "Image", "Compare")
CMAPS = ("jet", "viridis", "inferno", "magma", "coolwarm", "gray")
ORDER_NAMES = {"morf": "MoRF (most relevant first)", "lerf": "LeRF (least relevant first)", "random": "random region order"}
GALLERY_COLUMNS = 6


# ---------------------------------------------------------------- cached reads


def _stamp(folder: Path) -> tuple:
    """What a cached job depends on: the modification times of its files."""
    out = []
    for name in (results.METRICS_FILE, results.CURVES_FILE, results.HEATMAPS_FILE, results.SPLIT_FILE):
        p = folder / name
        out.append(p.stat().st_mtime_ns if p.exists() else 0)
    return tuple(out)


@st.cache_resource(show_spinner=False, max_entries=64)
def _job(folder: str, stamp: tuple) -> V.JobView:
    return V.load_job(folder)


def workspace() -> V.Workspace:
    folders = json.loads(os.environ.get(FOLDERS_ENV, "[]"))
    return _workspace(tuple(folders))


@st.cache_resource(show_spinner=False)
def _workspace(folders: tuple) -> V.Workspace:
    return V.Workspace(list(folders))


@st.cache_resource(show_spinner=False, ttl=30)
def _job_dirs(folders: tuple) -> list[Path]:
    return _workspace(folders).jobs()


def job(folder) -> V.JobView:
    """A job folder read through the cache, after checking it lies inside the given folders."""
    p = workspace().check(folder)
    return _job(str(p), _stamp(p))


def readable(dirs) -> list[Path]:
    """The job folders that read; the others (a half-written or damaged job, another format version) are listed in one warning, never hide the rest."""
    ok, bad = [], []
    for d in dirs:
        try:
            job(d)
            ok.append(d)
        except V.ViewerError as exc:
            bad.append(f"{Path(d).name}: {exc}")
    if bad:
        st.warning(f"{len(bad)} job folder(s) skipped, unreadable: " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))
    return ok


@st.cache_resource(show_spinner=False, max_entries=4096)
def _image(folder: str, stamp: tuple, image_id: int) -> np.ndarray:
    return V.load_image(_job(folder, stamp), image_id)


@st.cache_resource(show_spinner=False, max_entries=4096)
def _masks(folder: str, stamp: tuple, image_id: int) -> dict:
    return V.load_masks(_job(folder, stamp), image_id)


def image(j: V.JobView, image_id: int) -> np.ndarray:
    return _image(str(j.path), _stamp(j.path), int(image_id))


def masks(j: V.JobView, image_id: int) -> dict:
    return _masks(str(j.path), _stamp(j.path), int(image_id))


@st.cache_resource(show_spinner=False, max_entries=8192)
def _overlay(folder: str, stamp: tuple, method: str, image_id: int, alpha: float, cmap: str, outlines: tuple, width: int) -> bytes:
    j = _job(folder, stamp)
    x = _image(folder, stamp, image_id)
    pic = V.overlay(x, j.heatmaps[method][j.row(image_id)], alpha, cmap) if method in j.heatmaps else x
    return _png_array(V.upscale(V.draw_outlines(pic, _masks(folder, stamp, image_id), outlines), width))


def _png_array(picture: np.ndarray) -> bytes:
    """PNG bytes of a uint8 picture (encoded once, in the cache, instead of by st.image on every rerun)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return buf.getvalue()


def overlay(j: V.JobView, method: str, image_id: int, alpha: float, cmap: str, outlines=(), width: int = 256) -> bytes:
    return _overlay(str(j.path), _stamp(j.path), method, int(image_id), float(alpha), cmap, tuple(outlines), width)


@st.cache_resource(show_spinner=False, max_entries=64)
def _table(folder: str, stamp: tuple, method: str) -> pd.DataFrame:
    return V.image_table(_job(folder, stamp), method)


def table(j: V.JobView, method: str) -> pd.DataFrame:
    return _table(str(j.path), _stamp(j.path), method)


@st.cache_resource(show_spinner=False, max_entries=512)
def _perturbed(folder: str, stamp: tuple, method: str, order: str, image_id: int, k: int) -> np.ndarray:
    j = _job(folder, stamp)
    return V.perturbed_image(j, method, order, image_id, k, image=_image(folder, stamp, image_id))


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


@st.cache_resource(show_spinner=False, max_entries=16)
def _summary(dirs: tuple, stamps: tuple) -> dict:
    """The report's tables and plots (xbench.pipeline.report's functions) for these jobs."""
    from xbench.pipeline import plots, scorecard
    from xbench.pipeline import report as R

    jobs = [_job(d, s).result for d, s in zip(dirs, stamps)]
    groups = R.measurements(jobs)
    frame = R.summary_frame(jobs)
    out = {"jobs": len(jobs), "tables": {}, "plots": {}}
    out["tables"]["paper_table"] = ("The paper's table", R.paper_table(groups))
    out["tables"]["self_validation"] = ("Self-validation: each explainer beside the controls", R.self_validation(jobs))
    pixel = R.pixel_auc_table(frame)
    if len(pixel):
        out["tables"]["pixel_auc"] = ("Deletion and insertion (pixel curves)", pixel)
    card = scorecard.scorecard(jobs, R.metric_reliability(jobs))
    if len(card):
        out["tables"]["scorecard"] = ("Scorecard: each method across the metric families (mean [95% CI over images]; * better than random, "
                                      "Holm p < 0.05)", scorecard.wide(card))
    out["tables"]["pairwise"] = ("Pairwise comparisons (AOPC, MoRF)", R.pairwise(groups))
    out["tables"]["summary"] = ("All jobs", frame)
    bands = R.aopc_by_step_bands(groups)
    if bands:
        out["plots"]["aopc_by_step"] = _png(plots.aopc_by_step_figure(bands))
        out["plots"]["mean_curves"] = _png(plots.mean_curves_figure(R.mean_curves(groups)))
    scored = frame[frame["aopc"].notna()] if len(frame) else frame
    if len(scored):
        out["plots"]["aopc_vs_recall"] = _png(plots.aopc_vs_recall_figure(scored))
    if len(card):
        out["plots"]["scorecard"] = _png(plots.scorecard_figure(card, scorecard.headline(card)))
    return out


# ---------------------------------------------------------------- shared controls


def _fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def job_picker(key: str, label: str = "Job", sidebar: bool = True) -> V.JobView | None:
    ws = workspace()
    dirs = _job_dirs(tuple(str(r) for r in ws.roots))
    if not dirs:
        st.warning("No job folder with a metrics.json under the given folders.")
        return None
    dirs = readable(dirs)
    if not dirs:
        return None
    jobs = {str(d): job(d) for d in dirs}
    labels = {d: V.job_label(j, ws.roots) for d, j in jobs.items()}
    where = st.sidebar if sidebar else st
    linked = st.query_params.get(key)  # a deep link ?job=<folder>: checked like every path from the page
    if linked and st.session_state.get(f"_linked_{key}") != linked:
        p = str(ws.check(linked))  # ViewerError (shown on the page) when it lies outside the given folders
        if p not in jobs:
            raise V.ViewerError(f"'{linked}' is not a job folder with a metrics.json")
        st.session_state[key] = p
        st.session_state[f"_linked_{key}"] = linked
    chosen = where.selectbox(label, list(jobs), format_func=labels.get, key=key)
    return jobs[chosen]


def method_picker(j: V.JobView, key: str, label: str = "Map", sidebar: bool = True) -> str | None:
    if not j.methods:
        st.info(f"{j.path} was not scored: there are no maps or curves to show.")
        return None
    sc = j.scoring
    where = st.sidebar if sidebar else st
    return where.selectbox(label, j.methods, key=key, format_func=lambda m: m + (" (explainer)" if m == sc.explainer else " (control)"))


def image_label(frame: pd.DataFrame, image_id: int) -> str:
    r = frame[frame["image_id"] == image_id]
    if not len(r):
        return f"#{image_id}"
    r = r.iloc[0]
    mark = "" if r["correct"] else "  ✗ misclassified"
    aopc = f" · AOPC {r['aopc']:.4f}" if "aopc" in r and np.isfinite(r["aopc"]) else ""
    return f"#{image_id} {r['label']} → {r['predicted']}{aopc}{mark}"


def display_options(prefix: str) -> tuple[float, str, list[str]]:
    """Opacity, colour map and mask outlines (sidebar)."""
    st.sidebar.markdown("**Display**")
    alpha = st.sidebar.slider("Map opacity", 0.0, 1.0, 0.45, 0.05, key=f"{prefix}_alpha")
    cmap = st.sidebar.selectbox("Colour map", CMAPS, key=f"{prefix}_cmap")
    outlines = [k for k, lab in (("lungs", "lung outline (cyan)"), ("lesions", "lesion outline (magenta)"), ("markers", "marker outline (yellow)"))
                if st.sidebar.checkbox(lab, value=False, key=f"{prefix}_{k}")]
    return alpha, cmap, outlines


# ---------------------------------------------------------------- pages


def page_summary() -> None:
    ws = workspace()
    dirs = _job_dirs(tuple(str(r) for r in ws.roots))
    st.title("xbench results")
    st.caption("Read from: " + ", ".join(f"`{r}`" for r in ws.roots))
    if not dirs:
        st.warning("No job folder with a metrics.json under the given folders.")
        return
    dirs = readable(dirs)
    if not dirs:
        return
    stamps = tuple(_stamp(d) for d in dirs)
    s = _summary(tuple(str(d) for d in dirs), stamps)
    st.markdown(f"**{s['jobs']} job(s).** Tables and plots as `xbench-report` writes them (AOPC over the scored test images; "
                "95% CIs are bootstrap over images, or mean ± sd over seeds where a measurement has several; "
                f"'n too small' where fewer than {MIN_UNITS} images leave no CI or p-value worth printing).")
    for key, (title, frame) in s["tables"].items():
        st.subheader(title)
        st.dataframe(V.shown_table(frame), hide_index=True, width="stretch")  # "n too small" where a CI or p is withheld
        st.download_button(f"Download {key}.csv", frame.to_csv(index=False).encode(), file_name=f"{key}.csv", mime="text/csv", key=f"dl_{key}")
    if s["plots"]:
        st.subheader("Plots")
        cols = st.columns(len(s["plots"]))
        for col, (name, png) in zip(cols, s["plots"].items()):
            col.image(png, caption=name.replace("_", " "), width="stretch")


def picked():
    """The sidebar's job, map and display options (shared by Gallery and Image), and the map's per-image table; None while nothing is picked."""
    j = job_picker("job")
    if j is None:
        return None
    method = method_picker(j, "method")
    if method is None:
        return None
    return j, method, display_options("d"), table(j, method)


def page_gallery() -> None:
    chosen = picked()
    if chosen is None:
        return
    j, method, (alpha, cmap, outlines), frame = chosen
    st.title("Gallery")
    st.caption(f"`{j.path}`: {len(frame)} scored test image(s), map **{method}** over each. Click “Open” for one image's curves and steps.")
    c1, c2, c3, c4 = st.columns([3, 2, 2, 1])
    classes = c1.multiselect("True class", j.class_names, default=j.class_names, key="g_classes")
    correct = c2.radio("Prediction", ("all", "correct", "incorrect"), horizontal=True, key="g_correct")
    keys = [k for k in V.SORT_KEYS if k in frame.columns]
    sort = c3.selectbox("Sort by (worst first)", keys, format_func=lambda k: V.SORT_KEYS[k][0], key="g_sort")
    best = c4.checkbox("best first", key="g_best")
    shown = V.filter_sort(frame, classes, correct, sort, descending=best)
    if not len(shown):
        st.info("No scored image matches these filters.")
        return
    limit = 48
    if len(shown) > limit:
        st.caption(f"Showing the first {limit} of {len(shown)}.")
    for start in range(0, min(len(shown), limit), GALLERY_COLUMNS):
        cols = st.columns(GALLERY_COLUMNS)
        for col, (_, r) in zip(cols, shown.iloc[start : start + GALLERY_COLUMNS].iterrows()):
            iid = int(r["image_id"])
            col.image(overlay(j, method, iid, alpha, cmap, outlines, width=160), caption=image_label(frame, iid), width="stretch")
            col.button("Open", key=f"open_{iid}", on_click=_open_image, args=(iid,), width="stretch")
    with st.expander("Per-image figures (table)"):
        st.dataframe(shown, hide_index=True, width="stretch")
        st.download_button("Download images.csv", shown.to_csv(index=False).encode(), file_name="images.csv", mime="text/csv", key="dl_images")


def _open_image(image_id: int) -> None:
    st.session_state["image"] = image_id
    st.session_state["page"] = "Image"


def page_image() -> None:
    chosen = picked()
    if chosen is None:
        return
    j, method, (alpha, cmap, outlines), frame = chosen
    ids = [int(i) for i in frame["image_id"]]
    if not ids:
        st.info(f"{method} scored no image of this job.")
        return
    if st.session_state.get("image") not in ids:
        st.session_state["image"] = ids[0]
    iid = st.sidebar.selectbox("Image", ids, key="image", format_func=lambda i: image_label(frame, i))
    r = frame[frame["image_id"] == iid].iloc[0]
    st.title(f"Image #{iid}")
    st.markdown(f"True class **{r['label']}**, predicted **{r['predicted']}** ({'correct' if r['correct'] else 'misclassified'}); "
                f"the curves follow the probability of **{r['target']}**. Job `{j.path}`.")
    figs = V.image_figures(j, iid, method)
    names = {"aopc_morf": "AOPC (MoRF)", "aopc_lerf": "AOPC (LeRF)", "abpc": "ABPC", "aopc_random_control": "AOPC of the random map",
             "gain_over_random": "gain over random", "lesion_mass": "lesion mass", "lung_share": "lung share", "pointing_hit": "pointing game",
             "lesion_auroc": "lesion AUROC", "lesion_iou": "lesion IoU", "marker_mass": "marker mass"}
    shown = [(k, v) for k, v in figs.items() if k in names]
    for start in range(0, len(shown), 6):
        cols = st.columns(6)
        for col, (k, v) in zip(cols, shown[start : start + 6]):
            col.metric(names[k], _fmt(v))
    has_random = "random" in j.heatmaps and j.curves.rows("random")[j.row(iid)] and method != "random"
    orders = [o for o in V.REGION_ORDERS if j.curves.get(method, o) is not None and j.curves.rows(method)[j.row(iid)]]
    st.subheader("Perturbation curves and steps")
    c1, c2 = st.columns([1, 3])
    order = c1.radio("Order", orders, format_func=ORDER_NAMES.get, key="order") if orders else None
    steps = V.steps_of(j, method, order) if order else 0
    if st.session_state.get("step", 0) > steps:
        st.session_state["step"] = 0
    # A slider needs max > min: with no step to show (score.max_steps=0) it is disabled and k stays 0.
    k = min(c2.slider("Step k (regions perturbed)", 0, max(steps, 1), key="step", disabled=not order or steps == 0), steps)
    curves = V.curve_table(j, iid, [method, "random"])
    cols = st.columns(4)
    cols[0].image(V.upscale(V.draw_outlines(image(j, iid), masks(j, iid), outlines)), caption="image", width="stretch")
    cols[1].image(overlay(j, method, iid, alpha, cmap, outlines), caption=f"{method} map", width="stretch")
    if has_random:
        cols[2].image(overlay(j, "random", iid, alpha, cmap, outlines), caption="random control's map", width="stretch")
    if order:
        value = float(curves[f"{method}/{order}"].iloc[k])
        try:
            x = _perturbed(str(j.path), _stamp(j.path), method, order, iid, int(k))
            cols[3].image(V.upscale(V.to_uint8(x)), caption=f"x({k}): {k} of {steps} regions perturbed ({order}); scored f(x({k})) = {value:.4f}",
                          width="stretch")
        except V.ViewerError as exc:
            cols[3].warning(str(exc))
    else:
        st.info(f"No region-order curves of {method} for this image.")
        return
    lines = {f"{method} {o}": curves[f"{method}/{o}"].to_numpy() for o in orders}
    if "random/morf" in curves and method != "random":
        lines["random map (control)"] = curves["random/morf"].to_numpy()
    from xbench.pipeline import plots

    left, right = st.columns([3, 2])
    left.image(_png(plots.image_curves_figure(lines, step=k, dashed=("random map (control)",), title=f"Image #{iid}: perturbation curves")),
               width="stretch")
    with right:
        pert = dict(j.scoring.perturbation)
        pert_text = pert.pop("name", "?") + (" (" + ", ".join(f"{k} {v}" for k, v in pert.items()) + ")" if pert else "")
        st.caption(f"Perturbation: {pert_text}, {j.scoring.grid[0]}x{j.scoring.grid[1]} regions of {j.scoring.region_size} px; "
               "the step image is rebuilt with the engine's own ranking, perturbation and per-image random seed."
               + ("" if V.exact_order(j, method) else " This job predates stored region sums: the order is rebuilt from the float16 map, "
                  "and regions of nearly equal relevance may be swapped."))
        with st.expander("Curve values"):
            st.dataframe(curves, hide_index=True, width="stretch")


def page_compare() -> None:
    st.title("Compare")
    st.caption("The same test image under two jobs (models) or two maps, side by side; both curves on one plot.")
    alpha, cmap, outlines = display_options("d")
    cols = st.columns(2)
    picks = []
    for side, col in zip("AB", cols):
        with col:
            j = job_picker(f"cmp_job_{side}", f"Job {side}", sidebar=False)
            if j is None:
                return
            m = method_picker(j, f"cmp_method_{side}", f"Map {side}", sidebar=False)
            if m is None:
                return
            picks.append((j, m))
    (ja, ma), (jb, mb) = picks
    fa, fb = table(ja, ma), table(jb, mb)
    # Image ids are rows of each job's split: the same id is the same image only where both name the same file.
    common = [int(i) for i in fa["image_id"] if int(i) in set(int(x) for x in fb["image_id"]) and V.image_path(ja, int(i)) == V.image_path(jb, int(i))]
    if not common:
        st.info("These two scored no image in common (different data, split or scored subset).")
        return
    iid = st.selectbox("Image (scored by both)", common, key="cmp_image", format_func=lambda i: image_label(fa, i))
    lines = {}
    for side, col, (j, m), f in zip("AB", st.columns(2), picks, (fa, fb)):  # below the image box, so it reads top-down
        with col:
            st.image(overlay(j, m, iid, alpha, cmap, outlines), caption=f"{side}: {m} · {V.job_label(j, workspace().roots)}", width=300)
            figs = V.image_figures(j, iid, m)
            a, b, c = st.columns(3)
            a.metric(f"{side}: AOPC (MoRF)", _fmt(figs.get("aopc_morf")))
            b.metric(f"{side}: gain over random", _fmt(figs.get("gain_over_random")))
            c.metric(f"{side}: lesion mass", _fmt(figs.get("lesion_mass")))
            c_ = j.curves.get(m, "morf")
            if c_ is not None:
                lines[f"{side}: {m} morf ({j.path.name})"] = np.asarray(c_)[j.row(iid)]
    from xbench.pipeline import plots

    if lines:
        _, mid, _ = st.columns([1, 4, 1])
        mid.image(_png(plots.image_curves_figure(lines, title=f"Image #{iid}: MoRF curves")), width="stretch")


def main() -> None:
    st.set_page_config(page_title="xbench-view", layout="wide")
    try:
        workspace()
    except V.ViewerError as exc:
        st.error(str(exc))
        return
    if st.session_state.get("page") not in PAGES:
        st.session_state["page"] = PAGES[0]
    page = st.sidebar.radio("Page", PAGES, key="page")
    try:
        {"Summary": page_summary, "Gallery": page_gallery, "Image": page_image, "Compare": page_compare}[page]()
    except V.ViewerError as exc:
        st.error(str(exc))


main()
