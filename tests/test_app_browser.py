"""The web demo end to end in a real browser: `hf-dalle serve` on a tiny random pipeline (or HF_DALLE_WEB_DEMO_MODEL) in
a subprocess, driven by Debian's headless Chromium through Selenium and the system chromedriver. Saves
test-artifacts/web_demo.png.

Needs `apt-get install -y chromium chromium-driver` (`.ci/run` installs them). Outside CI the test skips without them;
in CI (CI=true) it fails instead, so a missing browser never passes silently.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from hf_dalle import DalleConfig, DalleVAEConfig
from hf_dalle.testing_utils import make_tiny_pipeline


pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # No network here: without these Chromium keeps trying to reach Google's services.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
]


def _missing_requirements() -> list[str]:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    for module in ("selenium", "gradio"):
        try:
            __import__(module)
        except ModuleNotFoundError:
            missing.append(f"python package {module}")
    return missing


@pytest.fixture(scope="module", autouse=True)
def require_browser():
    missing = _missing_requirements()
    if not missing:
        return
    reason = (
        f"the browser test needs {', '.join(missing)} "
        "(apt-get install -y chromium chromium-driver; pip install -e '.[test]')"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The pipeline served: a tiny random one, or the folder in HF_DALLE_WEB_DEMO_MODEL (how docs/web_demo.png is made:
    `HF_DALLE_WEB_DEMO_MODEL=src/hf_dalle/demo_model pytest tests/test_app_browser.py`)."""
    if os.environ.get("HF_DALLE_WEB_DEMO_MODEL"):
        return Path(os.environ["HF_DALLE_WEB_DEMO_MODEL"])
    path = tmp_path_factory.mktemp("web_demo") / "tiny_pipeline"
    make_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server_url(model_dir, tmp_path_factory):
    """`hf-dalle serve --model MODEL_DIR` on 127.0.0.1 and a free port, until the module's tests are done."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("web_demo_log") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hf_dalle.cli", "serve", "--model", str(model_dir), "--port", str(port)]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"hf-dalle serve exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"hf-dalle serve did not answer on {url} within 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        # The system chromedriver: Selenium Manager would try to download one.
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def _wait(driver, condition, timeout: float, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def _set_number(driver, elem_id: str, value: int) -> None:
    """Type into the number box of the slider `#elem_id` (what a user does to pick an exact value)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def _loaded_gallery_images(driver):
    """The gallery's images once every one of them has loaded, else None."""
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.CSS_SELECTOR, "#gallery img")
    loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
    return images if images and all(driver.execute_script(loaded, image) for image in images) else None


# Records every value the progress bar of the gallery shows while the request runs.
RECORD_PROGRESS_JS = """
window.progressSeen = [];
new MutationObserver(() => {
  for (const level of document.querySelectorAll('#gallery .progress-level')) {
    window.progressSeen.push(level.textContent.trim());
  }
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def test_generate_in_the_browser(server_url, model_dir, browser):
    from selenium.webdriver.common.by import By

    from hf_dalle.app import example_captions

    start = time.monotonic()
    browser.get(server_url)
    prompt = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"), 60, "the page did not load")
    page_text = browser.find_element(By.TAG_NAME, "body").text
    assert all(caption in page_text for caption in example_captions())  # the clickable demo-world captions

    # A bad request (no caption) is answered in the page...
    browser.find_element(By.ID, "generate").click()
    _wait(
        browser,
        lambda d: any("Please enter a caption" in t.text for t in d.find_elements(By.CSS_SELECTOR, ".toast-body")),
        30,
        "no error message for the empty caption",
    )
    browser.find_element(By.CSS_SELECTOR, "[data-testid=toast-close]").click()
    _wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, ".toast-body"), 10, "the error did not close")

    # ...and the server goes on serving: N = 512 candidates (the paper's N), the best 6 shown.
    _set_number(browser, "num-candidates", 512)
    _set_number(browser, "num-images", 6)
    # A held-out caption from the examples: clicking it fills the caption box.
    browser.find_element(By.XPATH, "//button[normalize-space(.)='a red square (unseen)']").click()
    _wait(browser, lambda d: prompt.get_attribute("value") == "a red square", 10, "the example did not fill in")
    browser.execute_script(RECORD_PROGRESS_JS)
    browser.find_element(By.ID, "generate").click()
    _wait(
        browser,
        lambda d: d.find_element(By.ID, "status").text.startswith("Sampled 512 candidates"),
        600,
        "the gallery did not fill",
    )
    images = _wait(browser, _loaded_gallery_images, 30, "the gallery's images did not load")
    assert len(images) == 6
    grid_size = DalleConfig.from_pretrained(model_dir / "transformer").image_grid_size
    image_size = grid_size * DalleVAEConfig.from_pretrained(model_dir / "vae").downsample_factor
    assert [image.get_attribute("naturalWidth") for image in images] == [str(image_size)] * 6
    captions = [image.get_attribute("alt") for image in images]
    ranks_and_scores = [re.fullmatch(r"#(\d+) · CLIP score (-?\d\.\d{3})", caption).groups() for caption in captions]
    assert [int(rank) for rank, _ in ranks_and_scores] == [1, 2, 3, 4, 5, 6]
    scores = [float(score) for _, score in ranks_and_scores]
    assert scores == sorted(scores, reverse=True)
    status = browser.find_element(By.ID, "status").text
    assert "showing the 6 best by CLIP score" in status
    assert "never seen in training: a held-out (color, shape) pairing" in status

    # Live progress while the codes were sampled, under its label: the bar moved through values between 0% and 100%.
    seen = [text for text in browser.execute_script("return window.progressSeen") if text]
    progress = [float(m.group(1)) for t in seen if (m := re.fullmatch(r"Sampling image codes - ([\d.]+)%", t))]
    assert any(0 < value < 100 for value in progress), f"no labelled progress shown while sampling: {seen[:20]}"

    ARTIFACTS_DIR.mkdir(exist_ok=True)
    screenshot = ARTIFACTS_DIR / "web_demo.png"
    tmp = screenshot.with_name(f".{screenshot.name}.tmp")
    tmp.write_bytes(browser.get_screenshot_as_png())
    tmp.replace(screenshot)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(screenshot) as image:
        image.verify()
    with Image.open(screenshot) as image:
        assert image.width == 1280 and image.height > 500
    print(f"browser test: {time.monotonic() - start:.1f} s in the page, {len(progress)} progress updates seen")
