"""The page in a real browser: headless Debian Chromium through Selenium and the system chromedriver loads
`/`, uploads an image, sees k results and the heatmap, and saves a screenshot (its path is printed).

Outside CI a machine without the browser skips with the reason; under CI=true a browser that cannot start
fails the test (`.ci/run` installs `chromium` and `chromium-driver` first: tools/ensure_browser.py)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("starlette", reason="remap-serve needs the serve extra (pip install -e .[serve])")

from tests.serve_helpers import build_collection, make_service  # noqa: E402

K = 5
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"browser test cannot start under CI=true: {reason}")
    pytest.skip(f"browser test needs Debian's chromium and chromium-driver ({reason}); "
                "run `python tools/ensure_browser.py` as root")


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        _unavailable(f"selenium not installed: {e}")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        _unavailable(f"chromium: {binary}, chromedriver: {driver}")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    try:
        return webdriver.Chrome(service=Service(executable_path=driver), options=options)
    except Exception as e:  # WebDriverException and friends: the browser did not start
        _unavailable(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from remap_jax.serve.app import create_app

    # the collection of tests/test_serve.py (built once per session)
    paths = build_collection(str(tmp_path_factory.getbasetemp() / "serve_collection"))
    port = _free_port()
    config = uvicorn.Config(create_app(make_service(paths)), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 300
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", paths
    server.should_exit = True
    thread.join(timeout=30)


def test_page_uploads_shows_results_and_heatmap(server, tmp_path_factory, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, paths = server
    browser = _browser()
    try:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "images" in b.find_element(By.ID, "about").text)
        k = browser.find_element(By.ID, "k")
        k.clear()
        k.send_keys(str(K))
        browser.find_element(By.ID, "file").send_keys(os.path.join(paths["queries"], "chelsea.png"))
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result")) == K)
        wait.until(lambda b: b.find_element(By.ID, "heat").get_attribute("data-drawn") == "1")
        tiles = browser.find_elements(By.CSS_SELECTOR, "#results .result")
        assert tiles[0].get_attribute("data-id").startswith("chelsea/")
        assert "chosen" in tiles[0].get_attribute("class")
        numbers = browser.find_element(By.ID, "numbers").text
        assert numbers.startswith("similarity ") and "whitening bias" in numbers
        # the heatmap canvas has coloured (non-transparent) pixels over the query image
        painted = browser.execute_script(
            "const c = document.getElementById('heat'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return [c.width, c.height, n];")
        assert painted[0] > 50 and painted[1] > 30 and painted[2] > painted[0] * painted[1] // 4
        assert browser.find_element(By.ID, "query-img").get_attribute("naturalWidth") == "140"
        shot = str(tmp_path_factory.mktemp("screenshots") / "remap_serve_page.png")
        browser.save_screenshot(shot)
        with capsys.disabled():
            print(f"\nremap-serve page screenshot: {shot}")
        # a box dragged on the query: only that part is described, the heatmap covers the box
        from selenium.webdriver.common.action_chains import ActionChains

        query = browser.find_element(By.ID, "query-img")
        width, height = query.size["width"], query.size["height"]
        ActionChains(browser).move_to_element_with_offset(query, -width // 4, -height // 4).click_and_hold() \
            .move_by_offset(width // 2, height // 2).release().perform()
        wait.until(lambda b: ", box " in b.find_element(By.ID, "status").text)
        box = [int(v) for v in browser.find_element(By.ID, "box").get_attribute("value").split(",")]
        assert 0 < box[0] < box[2] < 140 and 0 < box[1] < box[3] < 100
        wait.until(lambda b: b.find_element(By.ID, "heat").get_attribute("data-drawn") == "1")
        heat = browser.find_element(By.ID, "heat")
        assert heat.size["width"] < width * 0.75  # over the box only
        boxed = shot.replace(".png", "_box.png")
        browser.save_screenshot(boxed)
        with capsys.disabled():
            print(f"remap-serve page screenshot, search with a dragged box: {boxed}")
        tiles = browser.find_elements(By.CSS_SELECTOR, "#results .result")
        # the second heatmap mode and "more like this" by clicking a result
        browser.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="weights"]').click()
        wait.until(lambda b: b.find_element(By.ID, "heat").get_attribute("data-mode") == "weights")
        target = tiles[1].get_attribute("data-id")
        tiles[1].find_element(By.TAG_NAME, "img").click()
        wait.until(lambda b: "id:" + target in b.find_element(By.ID, "status").text)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#results .result")[0].get_attribute("data-id")
                   == target)
        # a broken upload shows the server's error on the page
        bad = tmp_path_factory.mktemp("bad") / "broken.png"
        bad.write_bytes(b"not a picture at all")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(lambda b: "not_an_image" in b.find_element(By.ID, "status").text)
    finally:
        browser.quit()
