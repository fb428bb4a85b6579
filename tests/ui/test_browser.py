"""A real browser (Debian's headless chromium through Selenium and chromedriver) against a running `instillm ui`.

Each tab is loaded and used as a person would; screenshots go to tests/artifacts/ui/ (and, with
INSTILLM_UI_DOCS=1, to docs/ui/ for the README). Skips where chromium, chromedriver or selenium is absent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ui.conftest import ARTIFACTS, REPO

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
    pytest.skip(
        f"no browser: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
pytest.importorskip("gradio", reason="the ui extra (gradio) is not installed")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 60


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium; nothing is downloaded (the system browser and driver)."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,1300",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture()
def page(browser, ui_server):
    """The UI freshly loaded."""
    browser.get(ui_server.url)
    wait(browser, lambda d: d.find_elements(By.ID, "data-open"))
    return browser


def wait(driver: Any, until: Callable[[Any], Any], timeout: float = WAIT_S) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(until)


def text_of(driver: Any, elem_id: str) -> str:
    found = driver.find_elements(By.ID, elem_id)
    return found[0].text if found else ""


def click_tab(driver: Any, name: str) -> None:
    tab = wait(
        driver,
        lambda d: next((t for t in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text == name), None),
    )
    tab.click()


def click_cell(driver: Any, table_id: str, text: str) -> None:
    """Click the cell of table `table_id` that shows `text`."""
    cells = lambda d: d.find_elements(By.CSS_SELECTOR, f"#{table_id} [role=gridcell]")
    cell = wait(driver, lambda d: next((c for c in cells(d) if c.text == text), None))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    cell.click()


def screenshot(driver: Any, name: str, focus: str | None = None) -> Path:
    """Save the page as tests/artifacts/ui/<name>.png (and docs/ui/<name>.png with INSTILLM_UI_DOCS=1)."""
    if focus:
        driver.execute_script("document.getElementById(arguments[0]).scrollIntoView({block: 'center'})", focus)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path))
    if os.environ.get("INSTILLM_UI_DOCS"):
        (REPO / "docs" / "ui").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, REPO / "docs" / "ui" / f"{name}.png")
    return path


def open_data(driver: Any) -> None:
    driver.find_element(By.ID, "data-open").click()
    wait(driver, lambda d: "15 rows" in text_of(d, "data-summary"))


def test_data_tab_highlights_the_trained_tokens_of_a_row(page):
    open_data(page)
    click_cell(page, "data-table", "reverse-0")
    trained = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#row-view span.tok.t"))
    assert "".join(s.get_attribute("textContent") for s in trained) == "cba<|im_end|>"
    assert all(" · id " in s.get_attribute("title") and "trained" in s.get_attribute("title") for s in trained)
    masked = page.find_elements(By.CSS_SELECTOR, "#row-view span.tok.m")
    assert "Reverse" in "".join(s.get_attribute("textContent") for s in masked)
    assert trained[0].value_of_css_property("background-color") != masked[0].value_of_css_property("background-color")
    screenshot(page, "data", focus="row-view")


def test_the_audit_flags_the_planted_row_and_clicks_through_to_it(page):
    open_data(page)
    click_tab(page, "Audit")
    wait(page, lambda d: "duplicate_prompt" in text_of(d, "audit-flagged"))
    click_cell(page, "audit-flagged", "dup-of-reverse-0")
    wait(page, lambda d: "same rendered prompt as 'reverse-0' (line 1)" in text_of(d, "audit-view"))
    screenshot(page, "audit", focus="audit-flagged")


def test_the_runs_tab_draws_the_loss_curve(page):
    click_tab(page, "Runs")
    page.find_element(By.ID, "run-open").click()
    wait(page, lambda d: text_of(d, "run-progress").startswith("step 4 of 4"))
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#loss-plot canvas, #loss-plot svg"))
    wait(page, lambda d: "eval_loss" in text_of(d, "loss-plot"))  # the legend: both curves are drawn
    screenshot(page, "runs", focus="loss-plot")


def test_the_chat_tab_returns_a_reply_on_both_sides(page):
    click_tab(page, "Chat")
    prompt = wait(page, lambda d: d.find_element(By.CSS_SELECTOR, "#chat-prompt textarea"))
    prompt.send_keys("Reverse the word abc")
    page.find_element(By.ID, "chat-send").click()
    answers = [page.find_element(By.CSS_SELECTOR, f"#chat-{s} textarea") for s in "ab"]
    wait(page, lambda d: all(a.get_attribute("value") for a in answers))
    wait(page, lambda d: answers[0].get_attribute("value") == answers[1].get_attribute("value"))  # greedy, same model
    assert "greedy (temperature 0)" in text_of(page, "chat-settings")
    screenshot(page, "chat", focus="chat-send")
