"""The web app (`space/app.py`): its answers to good and bad requests, two requests served at once, and the page in a
real browser (Debian's chromium driven by Selenium through Debian's chromedriver; nothing is downloaded).

The README's screenshot is this test's: `APP_SCREENSHOT=docs/app.png pytest tests/test_app.py -k browser`.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from conftest import make_tiny
from diffusers import DDIMScheduler
from PIL import Image
from training_helpers import ROOT, train

from diffusers_cunet.pipelines import ContinuousUNetPipeline
from diffusers_cunet.shipped import CLONE_FOLDER

pytest.importorskip("gradio", reason="the app's extra: pip install -e '.[app]'")
pytestmark = pytest.mark.skipif(not (CLONE_FOLDER / "model_index.json").is_file(), reason="no shipped model")

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
TIMEOUT = 180  # seconds a page may take to answer on a busy 2-core machine
SHIPPED = str(CLONE_FOLDER)


def load_app():
    spec = importlib.util.spec_from_file_location("space_app", ROOT / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves its annotations there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app():
    return load_app()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float32)


# ------------------------------------------------------------------------------------------------- in-process
def test_it_samples_the_shipped_model_and_says_what_it_cost(app):
    images, timing, beside, message = app.generate(SHIPPED, ["Trouser", "Bag"], 3.0, "EDMEulerScheduler", 4, 0, 2)
    assert message == "" and beside == []
    assert [caption for _, caption in images] == ["Trouser", "Trouser", "Bag", "Bag"]
    assert all(image.size == (app.SHOWN_SIZE, app.SHOWN_SIZE) and pixels(image).std() > 5 for image, _ in images)
    # EDM Euler takes one network call per step; guidance doubles it (one call of twice the batch)
    assert "s per image, 8 network evaluations per image" in timing and "ODE function evaluations" in timing
    again, *_ = app.generate(SHIPPED, ["Trouser", "Bag"], 3.0, "EDMEulerScheduler", 4, 0, 2)
    np.testing.assert_array_equal(pixels(again[0][0]), pixels(images[0][0]))  # the seed decides the images


def test_the_page_starts_from_what_the_models_card_recommends(app, tmp_path):
    import json

    release = json.loads((ROOT / "benchmarks" / "results" / "release.json").read_text())
    assert app.recommended(SHIPPED) == (release["recommended_guidance_scale"], release["recommended_steps"])
    bare = tmp_path / "bare"  # the same model saved without its card: no guidance, the app's steps
    app.load(SHIPPED).save_pretrained(bare)
    classes, scheduler, scale, steps, message = app.describe(str(bare))
    assert (scale["value"], steps["value"], message) == (1.0, app.DEFAULT_STEPS, "")
    assert classes["choices"] and scheduler["value"] == "EDMDPMSolverMultistepScheduler"


def test_only_the_schedulers_the_table_allows_are_offered(app):
    offered = app.schedulers(app.load(SHIPPED))
    assert list(offered)[0] == "EDMDPMSolverMultistepScheduler"  # the one it was saved with first
    assert "UniPCMultistepScheduler" in offered and "IPNDMScheduler" not in offered
    *_, message = app.generate(SHIPPED, ["Bag"], 1.0, "IPNDMScheduler", 4, 0, 1)
    assert "IPNDMScheduler cannot sample this model" in message


@pytest.mark.parametrize(
    "settings, expected",
    [
        (dict(steps=0), "Steps must be between 1 and 200 (got 0)"),
        (dict(steps=10_000), "Steps must be between 1 and 200 (got 10000)"),
        (dict(count=0), "Images per class must be between 1 and 8"),
        (dict(scale=-1), "The guidance scale must be between 0 and 20"),
        (dict(steps="many"), "must be numbers"),
        (dict(source="/"), "/ is not a pipeline this app can load"),
        (dict(source=""), "Name a saved pipeline"),
    ],
)
def test_bad_values_get_a_message_not_a_traceback(app, settings, expected):
    request = dict(source=SHIPPED, classes=["Bag"], scale=2.0, scheduler="EDMEulerScheduler", steps=4, seed=0, count=1)
    request.update(settings)
    images, timing, _, message = app.generate(*request.values())
    assert images == [] and timing == "" and message.startswith("**Cannot do that:**") and expected in message


def test_a_scale_an_unconditional_model_cannot_take(app, tmp_path):
    ContinuousUNetPipeline(unet=make_tiny(), scheduler=DDIMScheduler()).save_pretrained(tmp_path)
    images, *_ = app.generate(str(tmp_path), [], 1.0, "DDIMScheduler", 3, 0, 2)
    assert len(images) == 2 and [caption for _, caption in images] == ["sample 1", "sample 2"]
    *_, message = app.generate(str(tmp_path), [], 3.0, "DDIMScheduler", 3, 0, 2)
    assert "Cannot do that" in message and "guidance steers a class-conditional model" in message


def test_a_unet2d_pipeline_beside_it(app, tmp_path):
    """A UNet2DModel pipeline of the same recipe (guidable digits here) runs beside the cUNet with its own time."""
    common = ("--class_column", "label", "--class_dropout_prob", "0.1", "--preconditioning", "edm")
    train(tmp_path / "cunet", "--max_train_steps", "1", *common)
    train(tmp_path / "unet2d", "--max_train_steps", "1", "--model_type", "unet2d", *common)
    images, timing, beside, message = app.generate(str(tmp_path / "cunet"), ["3"], 2.0, "EDMEulerScheduler", 3, 0, 2,
                                                   str(tmp_path / "unet2d"))  # fmt: skip
    assert message == "" and len(images) == 2 and len(beside) == 2
    assert timing.count(" s per image,") == 2 and "Time per image, first / second" in timing


# ------------------------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python space/app.py` on a free port, as `make app` starts it; its address."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    with log.open("w") as output:
        process = subprocess.Popen([sys.executable, str(ROOT / "space" / "app.py"), "--port", str(port)],
                                   stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                urllib.request.urlopen(address, timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the app did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        assert f"the app: {address}" in log.read_text()  # what `make app` prints
        yield address
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_two_requests_at_once_are_both_served(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    answers: dict[int, tuple] = {}

    def ask(seed: int) -> None:
        answers[seed] = client.predict(SHIPPED, ["Sneaker"], 1.0, "EDMEulerScheduler", 3, seed, 1, "",
                                       api_name="/generate")  # fmt: skip

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(answers) == [0, 1]
    for images, timing, _, message in answers.values():
        assert len(images) == 1 and "s per image" in timing and not message


# ------------------------------------------------------------------------------------------------ the browser
@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_page_in_a_real_browser(server, browser):
    """Pick a class and a scheduler, generate, see images that are not blank with their time and evaluations; then
    a bad value, and its message in the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, TIMEOUT)
    browser.get(server)
    wait.until(until.element_to_be_clickable((By.CSS_SELECTOR, "#generate")))
    next(
        label for label in browser.find_elements(By.CSS_SELECTOR, "#classes label") if label.text == "Trouser"
    ).click()
    choice = browser.find_element(By.CSS_SELECTOR, "#scheduler input")
    choice.click()
    choice.send_keys(Keys.CONTROL, "a")
    choice.send_keys("EDMEuler")  # the list narrows to it
    wait.until(
        until.element_to_be_clickable((By.XPATH, "//ul[@role='listbox']//li[contains(., 'EDMEulerScheduler')]"))
    )
    browser.find_element(By.XPATH, "//ul[@role='listbox']//li[contains(., 'EDMEulerScheduler')]").click()
    steps = browser.find_element(By.CSS_SELECTOR, "#steps input")

    def type_steps(value: str) -> None:
        steps.send_keys(Keys.CONTROL, "a")  # (a modifier stays down until the call ends: one key chord per call)
        steps.send_keys(Keys.DELETE)
        steps.send_keys(value)

    type_steps("8")
    clicked = time.monotonic()
    browser.find_element(By.CSS_SELECTOR, "#generate").click()

    wait.until(lambda page: len(page.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 2)
    seconds_to_images = time.monotonic() - clicked
    timing = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#timing").text or False)
    assert "s per image" in timing and "16 network evaluations per image" in timing  # 8 steps, guided: twice
    source = browser.find_element(By.CSS_SELECTOR, "#gallery img").get_attribute("src")
    image = Image.open(io.BytesIO(urllib.request.urlopen(source, timeout=30).read()))
    assert image.size == (128, 128) and pixels(image).std() > 5, "a blank image"
    if os.environ.get("APP_SCREENSHOT"):
        browser.save_screenshot(os.environ["APP_SCREENSHOT"])
        print(f"first images {seconds_to_images:.1f} s after the click; screenshot: {os.environ['APP_SCREENSHOT']}")

    type_steps("0")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    message = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#message").text or False)
    assert "Cannot do that: Steps must be between 1 and 200 (got 0)" in message
    assert "Traceback" not in browser.page_source
