"""End to end: ``openrag serve`` in its own process, the page in headless Chromium, a question asked by typing.

The model is a tiny random Llama with the bundled tokenizer and the reflection tokens, so its answers are
junk; the test checks that the page shows exactly the answer the API gives for the same request, the
retrieval decision, and one evidence row (with its bars) per passage.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from .conftest import running_server, save_tiny_served_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them as root)")

QUESTION = "Who wrote the novel Dune?"
PASSAGES = [
    {"title": "Dune (novel)", "text": "Dune is a 1965 science fiction novel by the American author Frank Herbert."},
    {"title": "Paris", "text": "Paris is the capital and largest city of France."},
]


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory, smollm2_folder):
    return save_tiny_served_model(smollm2_folder, tmp_path_factory.mktemp("tiny_served_model"), max_positions=1024)


def _get(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _post(url: str, body: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tiny_model_folder, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve_log") / "server.log"
    with running_server(tiny_model_folder, log_path, "--max_new_tokens", "8") as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-extensions", "--window-size=1200,1600",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_the_answer_and_its_evidence(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    expected = _post(server + "/v1/answer", {"question": QUESTION, "passages": PASSAGES, "mode": "always_retrieve"})
    assert expected["retrieved"] is True and len(expected["candidates"]) == 2

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(ready.text_to_be_present_in_element((By.ID, "model"), "Model:"))
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.CSS_SELECTOR, "#evidence-box > summary").click()
    blocks = "\n\n".join(f"# {p['title']}\n{p['text']}" for p in PASSAGES)
    browser.find_element(By.ID, "passages").send_keys(blocks)
    Select(browser.find_element(By.ID, "mode")).select_by_value("always_retrieve")
    browser.find_element(By.ID, "ask").click()

    WebDriverWait(browser, 120).until(lambda d: d.find_element(By.ID, "result").is_displayed()
                                      or d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == ""
    shown = browser.find_element(By.ID, "answer").get_property("textContent")
    assert shown == (expected["text"] or "(empty answer)")
    assert browser.find_element(By.ID, "decision").text == "retrieved evidence"

    rows = browser.find_elements(By.CSS_SELECTOR, "#evidence .candidate")
    assert len(rows) == 2
    for row, candidate in zip(rows, expected["candidates"]):
        assert candidate["passage"]["title"] in row.find_element(By.CSS_SELECTOR, ".cand-title").text
        assert row.find_element(By.CSS_SELECTOR, ".passage-text").get_property("textContent") == candidate["passage"]["text"]
        meters = {m.get_attribute("aria-label"): float(m.get_attribute("aria-valuenow"))
                  for m in row.find_elements(By.CSS_SELECTOR, "[role=meter]")}
        assert meters["relevance"] == pytest.approx(candidate["relevance"])
        assert meters["support"] == pytest.approx(candidate["groundedness"])
        assert meters["utility"] == pytest.approx(candidate["utility"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#evidence .candidate.chosen")) == 1
