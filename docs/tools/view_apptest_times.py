"""Server-side page times with Streamlit's AppTest: each page's script run, first (empty caches) then cached."""
import os, json, time, sys
os.environ["XBENCH_VIEW_FOLDERS"] = json.dumps([sys.argv[1]])
from streamlit.testing.v1 import AppTest
out = {}
for rnd in ("first", "cached"):
    t = time.perf_counter(); at = AppTest.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "xbench", "apps", "view", "app.py"), default_timeout=300).run(); out[f"summary_{rnd}"] = time.perf_counter() - t
    assert not at.exception, at.exception
    for page in ("Gallery", "Image", "Compare"):
        t = time.perf_counter(); at.radio(key="page").set_value(page).run(); out[f"{page.lower()}_{rnd}"] = time.perf_counter() - t
        assert not at.exception, at.exception
    t = time.perf_counter(); at.radio(key="page").set_value("Image").run(); at.slider(key="step").set_value(10).run(); out[f"image_step_{rnd}"] = time.perf_counter() - t
print(json.dumps({k: round(v, 2) for k, v in out.items()}))
