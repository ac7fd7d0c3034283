"""The playground (``moa serve --ui``) in a real headless browser: Debian's chromium driven by selenium, against a
real ``moa serve`` over the scripted upstream. The page loads with no console error, a question shows one card per
proposer, the aggregator's answer, one timeline bar per call and the cost; the chat is multi-turn; markup in a
proposal is shown as text and runs nothing; a wrong key shows the server's own error. The page ships with a strict
Content-Security-Policy, no inline script and no outside URL. A screenshot of the finished page is saved under
``MOA_TEST_ARTIFACTS`` (default ``.artifacts/``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)

PRICES = {"input_per_mtok": 0.0, "output_per_mtok": 1_000_000.0}  # $1 a completion token
KEY = "playground-secret-key"
ARTIFACTS = Path(os.environ.get("MOA_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / ".artifacts"))
PAYLOAD = "<img src=x onerror=\"document.title='pwned';alert(1)\">"


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    configs = [
        ensemble(upstream_sync_url, "panel", [["fast1", "slow1"]], "pagg", backend={"prices": PRICES}),
        ensemble(upstream_sync_url, "solo", [["fast1"]], "pagg", description="one proposer"),
        sampled(upstream_sync_url),
    ]
    with moa_serve(tmp_path_factory.mktemp("serve-ui"), configs, "--ui") as server:
        yield server


def sampled(base_url: str) -> dict[str, Any]:
    """Two layers, the first one agent sampled 3 times in one call (its proposals come as ``fast1#1`` .. ``#3``)."""
    cfg = ensemble(base_url, "sampled", [["fast1"], ["slow1"]], "pagg")
    cfg["layers"][0]["agents"][0]["n"] = 3
    return cfg


@pytest.fixture(scope="module")
def keyed(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    configs = [ensemble(upstream_sync_url, "panel", [["fast1", "slow1"]], "pagg")]
    env = {"MOA_UI_TEST_KEYS": KEY}
    with moa_serve(tmp_path_factory.mktemp("serve-ui-key"), configs, "--ui", "--api-key-env", "MOA_UI_TEST_KEYS",
                   env=env) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def scripted(upstream_thread: ScriptedServer) -> ScriptedServer:
    upstream_thread.script("fast1", answer="It is four.")
    upstream_thread.script("slow1", answer="2 + 2 makes 4.", latency_s=0.4)
    upstream_thread.script("pagg", answer="2 + 2 = 4.")
    return upstream_thread


def page_root(server: ServeProcess) -> str:
    return server.base_url.removesuffix("/v1") + "/ui"


def open_page(driver: Any, server: ServeProcess) -> None:
    driver.get(page_root(server))
    driver.get_log("browser")  # start each test with an empty console
    driver.refresh()
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def ask(driver: Any, question: str, ensemble_name: str = "panel") -> None:
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ensemble option"))
    Select(driver.find_element(By.ID, "ensemble")).select_by_value(ensemble_name)
    driver.find_element(By.ID, "prompt").send_keys(question)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "status").text.startswith(("answered", "failed")))


def texts(driver: Any, selector: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def test_the_page_and_its_assets_carry_a_strict_policy_and_nothing_inline_or_outside(serve: ServeProcess) -> None:
    root = page_root(serve)
    with urllib.request.urlopen(root) as response:
        html = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe" not in policy
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all("src=" in attributes and not body.strip() for attributes, body in scripts)
    assert not re.search(r"\s(on\w+|style)=", html), "no inline event handler or style"
    for asset in ("playground.js", "playground.css", "favicon.svg"):
        with urllib.request.urlopen(f"{root}/{asset}") as response:
            body = response.read().decode()
            assert response.headers["Content-Security-Policy"] == policy
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg\b)", body), f"{asset} names an outside URL"
    script = urllib.request.urlopen(f"{root}/playground.js").read().decode()
    assert "innerHTML" not in script and "eval(" not in script and "insertAdjacentHTML" not in script
    status, _, body = serve.request("GET", "/ui/secrets.txt")
    assert status == 404 and b"error" in body


def test_a_question_fills_a_card_per_proposer_then_the_answer_a_bar_per_call_and_the_cost(
    serve: ServeProcess, scripted: ScriptedServer, browser: Any
) -> None:
    open_page(browser, serve)
    ask(browser, "What is 2 + 2?")
    cards = browser.find_elements(By.CSS_SELECTOR, "#cards .card")
    assert sorted(c.find_element(By.CSS_SELECTOR, ".text").text for c in cards) == ["2 + 2 makes 4.", "It is four."]
    assert sorted(c.find_element(By.CSS_SELECTOR, ".who").text for c in cards) == ["L1 fast1", "L1 slow1"]
    slow = next(c for c in cards if "slow1" in c.text)
    assert re.search(r"\d+ tokens · 0\.[4-9]\d s · \$", slow.find_element(By.CSS_SELECTOR, ".meta").text)
    assert browser.find_element(By.ID, "answer-text").text == "2 + 2 = 4."
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline .row")
    assert len(rows) == 3  # two proposers and the aggregator
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline .row .bar")) == 3
    labels = [r.find_element(By.CSS_SELECTOR, ".label").text for r in rows]
    assert labels[-1].startswith("L2 aggregator")
    bars = {r.find_element(By.CSS_SELECTOR, ".label").text: r.find_element(By.CSS_SELECTOR, ".bar") for r in rows}
    aggregator_bar = bars[labels[-1]]
    slow_bar = next(b for label, b in bars.items() if "slow1" in label)
    assert aggregator_bar.location["x"] >= slow_bar.location["x"] + slow_bar.size["width"] - 2  # it started after
    assert all("$" in r.find_element(By.CSS_SELECTOR, ".figures").text for r in rows)  # priced: each call's cost
    assert re.match(r"the answer: \$\S+ for 3 calls", browser.find_element(By.ID, "cost").text)
    assert console_errors(browser) == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "playground.png"))


def test_an_agents_samples_get_a_card_each_and_later_layers_follow_theirs(
    serve: ServeProcess, scripted: ScriptedServer, browser: Any
) -> None:
    scripted.script("fast1", answer=lambda model, messages, i: f"sample {i}")
    open_page(browser, serve)
    ask(browser, "What is 2 + 2?", "sampled")
    cards = browser.find_elements(By.CSS_SELECTOR, "#cards .card")
    who = [c.find_element(By.CSS_SELECTOR, ".who").text for c in cards]
    assert who == ["L1 fast1#1", "L1 fast1#2", "L1 fast1#3", "L2 slow1"]  # layer by layer, no card left waiting
    assert sorted(c.find_element(By.CSS_SELECTOR, ".text").text for c in cards[:3]) == [
        "sample 0",
        "sample 1",
        "sample 2",
    ]
    assert all("one of 3 samples" in c.find_element(By.CSS_SELECTOR, ".meta").text for c in cards[:3])
    assert browser.find_elements(By.CSS_SELECTOR, "#cards .card.running") == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline .row")) == 3  # one call of 3 samples, slow1, pagg
    assert browser.find_element(By.ID, "answer-text").text == "2 + 2 = 4."
    assert console_errors(browser) == []


def test_the_chat_is_multi_turn_and_a_new_chat_starts_over(
    serve: ServeProcess, scripted: ScriptedServer, browser: Any
) -> None:
    open_page(browser, serve)
    ask(browser, "What is 2 + 2?", "solo")
    ask(browser, "And times 3?", "solo")
    assert texts(browser, "#conversation li .role") == ["user", "assistant", "user", "assistant"]
    second = scripted.for_model("fast1")[-1].messages  # a proposer reads the conversation as the client sent it
    assert [(m["role"], m["content"]) for m in second] == [
        ("user", "What is 2 + 2?"), ("assistant", "2 + 2 = 4."), ("user", "And times 3?")
    ]  # fmt: skip
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cards .card")) == 1  # one proposer in "solo"
    browser.find_element(By.ID, "new-chat").click()
    assert texts(browser, "#conversation li") == [] and texts(browser, "#cards .card") == []
    assert console_errors(browser) == []


def test_markup_in_a_proposal_shows_as_text_and_runs_nothing(
    serve: ServeProcess, scripted: ScriptedServer, browser: Any
) -> None:
    scripted.script("fast1", answer=PAYLOAD)
    scripted.script("pagg", answer=f"Quoting it: {PAYLOAD}")
    open_page(browser, serve)
    title = browser.title
    ask(browser, "Say something odd")
    shown = texts(browser, "#cards .card .text")
    assert PAYLOAD in shown
    assert browser.find_element(By.ID, "answer-text").text == f"Quoting it: {PAYLOAD}"
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert browser.title == title
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    assert console_errors(browser) == []


def test_a_wrong_key_shows_the_servers_error_and_the_right_one_is_kept_for_the_tab(
    keyed: ServeProcess, scripted: ScriptedServer, browser: Any
) -> None:
    open_page(browser, keyed)
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "key-form").is_displayed())
    status, _, body = keyed.request("GET", "/v1/models")
    assert status == 401
    server_says = json.loads(body)["error"]["message"]
    assert browser.find_element(By.ID, "error").text == f"401: {server_says}"
    browser.find_element(By.ID, "key").send_keys("not-the-key")
    browser.find_element(By.ID, "use-key").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "key-form").is_displayed())
    assert browser.find_element(By.ID, "error").text == f"401: {server_says}"
    assert texts(browser, "#ensemble option") == []
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.ID, "use-key").click()
    WebDriverWait(browser, 10).until(lambda d: texts(d, "#ensemble option") == ["panel"])
    assert not browser.find_element(By.ID, "error").is_displayed()
    ask(browser, "What is 2 + 2?")
    assert browser.find_element(By.ID, "answer-text").text == "2 + 2 = 4."
    assert browser.execute_script("return sessionStorage.length") == 1
    assert browser.execute_script("return localStorage.length") == 0  # for the tab only
    assert all("401" in e for e in console_errors(browser))  # only the refused requests
    browser.execute_script("sessionStorage.clear()")


def test_without_ui_there_is_no_page(upstream_sync_url: str, tmp_path: Path) -> None:
    with moa_serve(tmp_path, [ensemble(upstream_sync_url, "panel", [["fast1"]], "pagg")]) as server:
        status, _, _ = server.request("GET", "/ui")
    assert status == 404
