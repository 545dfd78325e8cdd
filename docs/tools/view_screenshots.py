"""Screenshots of each xbench-view page and browser-side load times (first and cached). Usage: shots.py <folder> <out dir> <port> [job index]"""
import subprocess, sys, time, json, os
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from test_view import settle

folder, out, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
shots = len(sys.argv) < 5 or sys.argv[4] != "noshots"
srv = subprocess.Popen([sys.executable, "-m", "xbench.apps.view", *folder.split(","), "--port", str(port)], stdout=open(f"{out}/server.log", "w"), stderr=subprocess.STDOUT)
time.sleep(8)
o = webdriver.ChromeOptions(); o.binary_location = "/usr/bin/chromium"
for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1050", "--force-device-scale-factor=1"):
    o.add_argument(a)
d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
w = WebDriverWait(d, 300)
times = {}
def done(dd):
    """The run finished: no status widget, no skeleton, every image in main loaded."""
    if dd.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget'], [data-testid='stSkeleton']"):
        return False
    return dd.execute_script("return Array.from(document.querySelectorAll('main img')).every(i => i.complete && i.naturalWidth > 0)")
def load(name, text, action):
    t = time.perf_counter(); action(); w.until(EC.text_to_be_present_in_element((By.TAG_NAME, "main"), text))
    time.sleep(0.05); WebDriverWait(d, 300, poll_frequency=0.05).until(done)
    el = time.perf_counter() - t
    settle(d)
    return el
def page(p):
    return lambda: w.until(EC.element_to_be_clickable((By.XPATH, f"//label[.//p[normalize-space()='{p}']]"))).click()
try:
    for rnd in ("first", "cached"):
        if rnd == "cached":
            d.get("about:blank")
        times[f"summary_{rnd}"] = load("summary", "All jobs", lambda: d.get(f"http://127.0.0.1:{port}/"))
        if shots and rnd == "first": d.save_screenshot(f"{out}/view-summary.png")
        times[f"gallery_{rnd}"] = load("gallery", "Open", page("Gallery"))
        if shots and rnd == "first":
            d.find_element(By.XPATH, "//label[.//p[normalize-space()='lesion outline (magenta)']]").click(); settle(d)
            d.save_screenshot(f"{out}/view-gallery.png")
        times[f"image_{rnd}"] = load("image", "Perturbation curves and steps",
                                     lambda: w.until(EC.element_to_be_clickable((By.XPATH, "//button[.//p[normalize-space()='Open']]"))).click())
        if shots and rnd == "first":
            s = d.find_element(By.CSS_SELECTOR, "input[type='range'][aria-label='Step k (regions perturbed)']")
            d.execute_script("arguments[0].focus()", s)
            for _ in range(12): ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
            w.until(EC.text_to_be_present_in_element((By.TAG_NAME, "main"), "x(12)")); settle(d)
            d.save_screenshot(f"{out}/view-image.png")
        times[f"compare_{rnd}"] = load("compare", "scored by both", page("Compare"))
        if shots and rnd == "first":
            b = d.find_elements(By.CSS_SELECTOR, "main [data-testid='stSelectbox'] input")[2]
            b.click(); opts = w.until(lambda dd: dd.find_elements(By.XPATH, "//*[@role='option']"))
            opts[1].click(); settle(d); time.sleep(1)
            d.save_screenshot(f"{out}/view-compare.png")
    print(json.dumps({k: round(v, 2) for k, v in times.items()}))
finally:
    d.quit(); srv.terminate(); srv.wait()
