"""xbench-view: the data layer against what the engine scored, each page through Streamlit's AppTest, and one real browser run.

One small multirun (a tiny random CNN read through model=file, two explainers, 8 images each) is made once for the module.
"""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")

from tests.helpers import xbench  # noqa: E402
from xbench.metrics.aopc import aopc_per_image  # noqa: E402
from xbench.pipeline import results  # noqa: E402
from xbench.pipeline import view_data as V  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "xbench" / "apps" / "view" / "app.py")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, warm_cache):
    import keras

    tmp = tmp_path_factory.mktemp("view")
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same", name="c1")(inp)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", padding="same", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="pred")(x)).save(tmp / "tiny.keras")
    xbench(["-m", "+experiment=smoke", "score.subset=all", "model=file", f"model.path={tmp / 'tiny.keras'}", "explainer=gradcam,saliency",
            "hydra.sweep.dir=sweep"], cwd=tmp, cache=warm_cache, extra_env={"PYTHONWARNINGS": "ignore"}, timeout=600, check=True)
    return tmp / "sweep"


def _jobs(sweep):
    return [V.load_job(sweep / n) for n in ("0", "1")]


# ---------------------------------------------------------------- the data layer


def test_step_images_are_the_images_the_engine_scored(sweep):
    """Every rebuilt x(k), fed to the job's model, gives back curves.npz's value at k (all images, methods, region orders)."""
    import keras

    import xbench.models.adapt  # noqa: F401  (registers what model.keras names)
    import xbench.models.card  # noqa: F401
    import xbench.models.preprocess  # noqa: F401

    checked = 0
    for job in _jobs(sweep):
        model = keras.saving.load_model(job.path / "model.keras", safe_mode=True)
        for method in job.methods:
            assert V.exact_order(job, method)
            for order in V.REGION_ORDERS:
                c = job.curves.get(method, order)
                if c is None:
                    continue
                for r in np.flatnonzero(job.curves.rows(method)):
                    iid = int(job.curves.image_ids[r])
                    xs = np.stack([V.perturbed_image(job, method, order, iid, k) for k in range(c.shape[1])])
                    got = np.asarray(model.predict(xs, verbose=0))[:, job.curves.targets[r]]
                    np.testing.assert_allclose(got, c[r], atol=1e-4, err_msg=f"{job.path} {method} {order} image {iid}")
                    checked += 1
    assert checked >= 2 * 8 * 3  # two jobs, 8 images, explainer MoRF + LeRF + random control at least


def test_step_zero_is_the_image_and_the_last_step_perturbs_every_region(sweep):
    job = _jobs(sweep)[0]
    iid = int(job.curves.image_ids[0])
    x = V.load_image(job, iid)
    K = V.steps_of(job, "gradcam", "morf")
    from xbench.data.pixels import to_unit_float

    np.testing.assert_array_equal(V.perturbed_image(job, "gradcam", "morf", iid, 0), to_unit_float(x))  # the pipeline's one conversion
    last = V.perturbed_image(job, "gradcam", "morf", iid, K)
    assert (np.abs(last - x / 255) > 1e-6).mean() > 0.5  # Gaussian noise almost everywhere
    rank = V.rank_map(job, "gradcam", "morf", iid)
    assert rank.min() == 0 and rank.max() == K - 1
    with pytest.raises(V.ViewerError, match="step must lie"):
        V.perturbed_image(job, "gradcam", "morf", iid, K + 1)


def test_image_table_holds_the_per_image_figures_of_curves_npz(sweep):
    job = _jobs(sweep)[0]
    t = V.image_table(job, "gradcam")
    c = job.curves
    np.testing.assert_array_equal(t["image_id"], c.image_ids)
    np.testing.assert_allclose(t["aopc"], aopc_per_image(c.get("gradcam", "morf")))
    np.testing.assert_allclose(t["gain"], aopc_per_image(c.get("gradcam", "morf")) - aopc_per_image(c.get("random", "morf")))
    np.testing.assert_allclose(t["lesion_mass"], c.per_image[("lesion_mass", "gradcam")], equal_nan=True)
    assert t["aopc"].mean() == pytest.approx(job.scoring.methods["gradcam"].orders["morf"].aopc.mean)
    s = V.filter_sort(t, sort="aopc")
    assert list(s["aopc"]) == sorted(t["aopc"])  # worst first
    only = V.filter_sort(t, classes=["COVID"], correct="correct", sort="gain", descending=True)
    assert set(only["label"]) <= {"COVID"} and only["correct"].all() and list(only["gain"]) == sorted(only["gain"], reverse=True)
    oracle = V.image_table(job, "oracle")  # a reference map: only the images with a lesion
    assert len(oracle) == int(c.rows("oracle").sum()) < len(t)


def test_shown_tables_say_n_too_small_where_a_ci_or_p_is_withheld():
    from xbench.metrics.bootstrap import MIN_UNITS, TOO_FEW_TEXT

    frame = pd.DataFrame({"a": ["x", "y"], "diff": [0.1, 0.2], "ci_low": [np.nan, 0.05], "ci_high": [np.nan, 0.3], "p_value": [np.nan, 0.0123],
                          "n_images": [3, MIN_UNITS], "unit": ["image", "image"]})
    shown = V.shown_table(frame)
    assert shown["ci_low"].tolist() == [TOO_FEW_TEXT, "0.05"] and shown["p_value"].tolist() == [TOO_FEW_TEXT, "0.0123"]
    assert shown["diff"].tolist() == [0.1, 0.2] and frame["ci_low"].isna().iloc[0]  # other columns, and the frame itself, unchanged
    enough = frame.iloc[1:]
    assert V.shown_table(enough) is enough


def test_workspace_reads_only_inside_its_folders(sweep, tmp_path):
    ws = V.Workspace([sweep])
    assert [p.name for p in ws.jobs()] == ["0", "1"]
    assert ws.check(sweep / "0") == (sweep / "0").resolve()
    for outside in (tmp_path, sweep / ".." / "tiny.keras", "/etc"):
        with pytest.raises(V.ViewerError, match="outside the folders"):
            ws.check(outside)
    (sweep / "link").symlink_to(tmp_path)  # a link inside that points outside is refused too
    try:
        with pytest.raises(V.ViewerError, match="outside"):
            ws.check(sweep / "link")
    finally:
        (sweep / "link").unlink()
    with pytest.raises(V.ViewerError, match="not a folder"):
        V.Workspace([tmp_path / "missing"])


def test_cli_refuses_bad_folders_in_one_line(tmp_path, capsys):
    from xbench.apps.view import main

    assert main([str(tmp_path / "missing")]) == 2
    assert "xbench-view: error:" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no job folder" in capsys.readouterr().err


# ---------------------------------------------------------------- the pages (AppTest)


@pytest.fixture
def app(sweep, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("XBENCH_VIEW_FOLDERS", json.dumps([str(sweep)]))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _page(at, name):
    at.radio(key="page").set_value(name).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _captions(at):
    """The captions of the st.image elements on the page, in order."""
    return [img.caption for el in at.get("image") for img in el.proto.imgs]


def test_summary_page_shows_the_reports_tables(app, sweep):
    from xbench.pipeline import report as R

    col = R.collect([sweep])
    groups = R.measurements(col.jobs)
    heads = [s.value for s in app.subheader]
    assert heads[:2] == ["The paper's table", "Self-validation: each explainer beside the controls"]
    card = next(h for h in heads if h.startswith("Scorecard"))
    assert heads.index(card) < heads.index("Pairwise comparisons (AOPC, MoRF)")
    shown = {h: d.value for h, d in zip(heads, app.dataframe)}
    pd.testing.assert_frame_equal(shown["The paper's table"].reset_index(drop=True), R.paper_table(groups).reset_index(drop=True), check_dtype=False)
    jobs = shown["All jobs"]
    for _, row in jobs.iterrows():
        m = json.loads((Path(row["job"]) / results.METRICS_FILE).read_text())
        assert row["aopc"] == pytest.approx(m["scoring"]["methods"][m["scoring"]["explainer"]]["orders"]["morf"]["aopc"]["mean"])
    assert len(jobs) == 2
    # the smoke jobs score fewer images than MIN_UNITS: no CI and no p-value, "n too small" in their place (issue 27)
    from xbench.metrics.bootstrap import MIN_UNITS, TOO_FEW_TEXT

    assert (jobs["images_scored"] < MIN_UNITS).all() and (jobs["aopc_ci_low"] == TOO_FEW_TEXT).all()
    pw = shown["Pairwise comparisons (AOPC, MoRF)"]
    assert len(pw) and (pw["p_value"] == TOO_FEW_TEXT).all() and (pw["ci_high"] == TOO_FEW_TEXT).all()
    assert {"paper_table.csv", "summary.csv"} <= {b.proto.label.removeprefix("Download ") for b in app.get("download_button")}
    assert {"aopc by step", "mean curves", "aopc vs recall", "scorecard"} <= set(_captions(app))
    from xbench.pipeline import scorecard

    want = scorecard.wide(scorecard.scorecard(col.jobs, R.metric_reliability(col.jobs)))
    pd.testing.assert_frame_equal(shown[card].reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)
    assert {"gradcam", "saliency", "random (control)"} <= set(want["method"])


def test_gallery_lists_the_scored_images_worst_first_and_opens_one(app, sweep):
    at = _page(app, "Gallery")
    job = V.load_job(sweep / "0")
    per = aopc_per_image(job.curves.get("gradcam", "morf"))
    ids = [int(job.curves.image_ids[i]) for i in np.lexsort((job.curves.image_ids, per))]  # ascending AOPC, ties by id
    caps = _captions(at)
    assert [int(c.split()[0][1:]) for c in caps] == ids
    assert f"AOPC {per.min():.4f}" in caps[0]
    at.radio(key="g_correct").set_value("incorrect").run()
    n_wrong = int((job.curves.labels != job.curves.predictions).sum())
    assert len(_captions(at)) == n_wrong or (n_wrong == 0 and "No scored image" in at.info[0].value)
    at.radio(key="g_correct").set_value("all").run()
    at.button(key=f"open_{ids[-1]}").click().run()
    assert at.radio(key="page").value == "Image" and at.title[0].value == f"Image #{ids[-1]}"


def test_image_page_shows_the_images_figures_curves_and_steps(app, sweep):
    at = _page(app, "Image")
    job = V.load_job(sweep / "0")
    iid = int(at.selectbox(key="image").value)
    r = job.row(iid)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["AOPC (MoRF)"] == f"{aopc_per_image(job.curves.get('gradcam', 'morf')[r:r + 1])[0]:.4f}"
    assert metrics["AOPC of the random map"] == f"{aopc_per_image(job.curves.get('random', 'morf')[r:r + 1])[0]:.4f}"
    assert metrics["lesion mass"] == f"{job.curves.per_image[('lesion_mass', 'gradcam')][r]:.4f}" or metrics["lesion mass"] == "n/a"
    values = at.dataframe[-1].value
    for name in ("gradcam/morf", "gradcam/lerf", "random/morf"):
        np.testing.assert_allclose(values[name], job.curves.curves[tuple(name.split("/"))][r], rtol=0, atol=1e-7)
    at.slider(key="step").set_value(5).run()
    cap = [c for c in _captions(at) if c.startswith("x(5)")]
    assert cap == [f"x(5): 5 of 16 regions perturbed (morf); scored f(x(5)) = {job.curves.get('gradcam', 'morf')[r, 5]:.4f}"]
    at.radio(key="order").set_value("lerf").run()
    assert any(c.endswith(f"f(x(5)) = {job.curves.get('gradcam', 'lerf')[r, 5]:.4f}") for c in _captions(at))


def test_compare_page_puts_two_jobs_side_by_side(app, sweep):
    at = _page(app, "Compare")
    jobs = _jobs(sweep)
    at.selectbox(key="cmp_job_B").set_value(str(jobs[1].path.resolve())).run()
    iid = int(at.selectbox(key="cmp_image").value)
    metrics = {m.label: m.value for m in at.metric}
    for side, job in zip("AB", jobs):
        r = job.row(iid)
        assert metrics[f"{side}: AOPC (MoRF)"] == f"{aopc_per_image(job.curves.get(job.scoring.explainer, 'morf')[r:r + 1])[0]:.4f}"
    caps = _captions(at)
    assert caps[0].startswith("A: gradcam") and caps[1].startswith("B: saliency")


def test_a_link_to_a_folder_outside_is_refused(sweep, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("XBENCH_VIEW_FOLDERS", json.dumps([str(sweep)]))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["job"] = str(tmp_path)
    at.session_state["page"] = "Gallery"
    at.run()
    assert "outside the folders" in at.error[0].value
    assert not at.get("image")  # nothing of the other folder shown


def test_an_unreadable_job_is_listed_and_never_hides_the_others(sweep, tmp_path, monkeypatch):
    import shutil

    from streamlit.testing.v1 import AppTest

    ws = tmp_path / "ws"
    shutil.copytree(sweep, ws)
    jobs = sorted(p.parent for p in ws.glob("*/metrics.json"))
    (jobs[0] / "curves.npz").unlink()  # a scored job whose curves are gone
    monkeypatch.setenv("XBENCH_VIEW_FOLDERS", json.dumps([str(ws)]))
    for page in ("Summary", "Gallery"):
        at = AppTest.from_file(APP, default_timeout=120)
        at.session_state["page"] = page
        at.run()
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        assert any("1 job folder(s) skipped, unreadable" in w.value and "curves.npz" in w.value for w in at.warning)
    assert any("scored test image(s)" in c.value for c in at.caption)  # the Gallery of a job that reads


# ---------------------------------------------------------------- a real browser


def _browser():
    """(chromium binary, chromedriver) or a reason why not."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[test]')"
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        return None, ("no Chromium and chromedriver on PATH: install Debian's chromium and chromium-driver "
                      "(.ci/run does, with apt, where it runs as root)")
    return (binary, driver), ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settle(driver, timeout: float = 60) -> None:
    """Wait until Streamlit has finished the current run (no running-status widget, every table drawn)."""
    from selenium.webdriver.common.by import By

    end = time.monotonic() + timeout
    time.sleep(0.3)
    while time.monotonic() < end:
        busy = driver.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget'], [data-testid='stSkeleton']")
        if not busy:
            time.sleep(0.5)
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_in_a_real_browser(sweep, tmp_path):
    found, why = _browser()
    if not found:
        pytest.skip(f"browser test skipped: {why}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "xbench.apps.view", str(sweep), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        opts.add_argument(a)
    driver = None
    try:
        import urllib.request

        for _ in range(120):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("xbench-view did not answer: " + (tmp_path / "server.log").read_text()[-2000:])
        driver = webdriver.Chrome(service=Service(found[1]), options=opts)
        wait = WebDriverWait(driver, 90)
        t0 = time.perf_counter()
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "The paper's table"))
        settle(driver)
        first_load = time.perf_counter() - t0
        driver.save_screenshot(str(tmp_path / "summary.png"))

        def click_text(text):
            wait.until(EC.element_to_be_clickable((By.XPATH, f"//label[.//p[normalize-space()='{text}']]"))).click()

        click_text("Gallery")
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "scored test image(s)"))
        settle(driver)
        # choose the second job in the sidebar's job box
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='stSidebar'] [data-testid='stSelectbox'] input"))).click()
        wait.until(EC.element_to_be_clickable((By.XPATH, "//*[@role='option'][contains(., 'saliency')]"))).click()
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "main"), "sweep/1"))
        settle(driver)
        wait.until(EC.element_to_be_clickable((By.XPATH, "//button[.//p[normalize-space()='Open']]"))).click()
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), "Perturbation curves and steps"))
        slider = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[type='range'][aria-label='Step k (regions perturbed)']")))
        driver.execute_script("arguments[0].focus()", slider)  # the range input itself is visually hidden; keys move the thumb
        for _ in range(5):
            ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
        wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "main"), "x(5): 5 of 16 regions perturbed"))
        settle(driver)
        driver.save_screenshot(str(tmp_path / "image.png"))
        text = driver.find_element(By.TAG_NAME, "main").text
        assert "Image #" in text and "saliency map" in text and "AOPC (MoRF)" in text
        imgs = driver.find_elements(By.CSS_SELECTOR, "main img")
        assert len(imgs) >= 4  # image, map, random map, curves, x(k)
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in imgs)
        assert (tmp_path / "image.png").stat().st_size > 20000
        print(f"first load of the summary page in the browser: {first_load:.2f} s")
    finally:
        if driver is not None:
            driver.save_screenshot(str(tmp_path / "last.png"))  # where it stood (a failure's evidence)
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
        log.close()
