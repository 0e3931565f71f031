"""A person's path through `align label` and `align arena`, driven in headless Chromium.

Needs the system `chromium` and `chromedriver` (Debian: chromium, chromium-driver; `.ci/run` installs
them); skipped with the reason when they are missing. No browser or driver is ever downloaded.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO, train_rm_briefly

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no system chromium + chromedriver (apt install chromium chromium-driver)",
)
PROMPTS = REPO / "data/synthetic/eval.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(*args: str) -> Iterator[str]:
    """`align ARGS --port P` in a subprocess; yields its URL once it answers, stops it afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "align.cli", *map(str, args), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                time.sleep(0.5)
        if "--annotators" in args:  # the link the server printed carries the annotator's token
            link = next(line for line in process.stdout if "?token=" in line)
            yield url + "?" + link.split("?", 1)[1].split()[0]
        else:
            yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for_text(browser, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 120).until(lambda d: text in d.find_element(By.ID, element_id).text)


def click(browser, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, element_id).click()


def test_rank_in_the_browser_then_train_a_reward_model(
    browser, runner, micro_sft: Path, tmp_path: Path
) -> None:
    rankings = tmp_path / "rankings.jsonl"
    label = ["label", "--model", micro_sft, "--data", PROMPTS, "--limit", "3", "--k", "3"]
    with server(*label, "--output", rankings, "--max-new-tokens", "12", "--annotator", "ada") as url:
        browser.get(url)
        wait_for_text(browser, "progress", "0 / 3")
        shown = [browser.find_element("id", f"response-{i}").text for i in range(3)]
        for i in (2, 0, 1):
            click(browser, f"response-{i}")
        assert "#1" in browser.find_element("id", "response-2").text
        click(browser, "submit")
        wait_for_text(browser, "progress", "1 / 3")
        for i in (1, 2, 0):
            click(browser, f"response-{i}")
        click(browser, "submit")
        wait_for_text(browser, "progress", "2 / 3")
        click(browser, "tie")
        wait_for_text(browser, "prompt", "All done")
    rows = [json.loads(line) for line in rankings.read_text().splitlines()]
    assert [(r["item"], r["judgement"], r.get("ranking")) for r in rows] == [
        (0, "ranking", [2, 0, 1]),
        (1, "ranking", [1, 2, 0]),
        (2, "tie", None),
    ]
    assert rows[0]["responses"] == [t if t != "(empty response)" else "" for t in shown]  # what was shown
    assert {r["annotator"] for r in rows} == {"ada"}
    train_rm_briefly(runner, micro_sft, rankings, tmp_path / "rm")


def test_arena_votes_give_the_win_rate_on_the_page(
    browser, micro_sft: Path, micro_dpo: Path, tmp_path: Path
) -> None:
    votes = tmp_path / "votes.jsonl"
    arena = ["arena", "--model-a", micro_sft, "--model-b", micro_dpo, "--data", PROMPTS, "--limit", "3"]
    with server(*arena, "--output", votes, "--max-new-tokens", "12") as url:
        browser.get(url)
        for done, button in enumerate(("vote-left", "vote-right", "tie"), start=1):
            wait_for_text(browser, "progress", f"{done - 1} / 3")
            click(browser, button)
            wait_for_text(browser, "stats", f"; {done} votes")  # the live win rate follows every vote
        wait_for_text(browser, "prompt", "All done")
        stats = browser.find_element("id", "stats").text
        revealed = browser.find_element("id", "prompt").text
    rows = [json.loads(line) for line in votes.read_text().splitlines()]
    b_wins, ties = sum(r["winner"] == "b" for r in rows), sum(r["winner"] == "tie" for r in rows)
    assert ties == 1 and len(rows) == 3
    assert f"Policy B win rate: {100 * (b_wins + 0.5 * ties) / 3:.1f}%" in stats
    assert f"{b_wins} B, {2 - b_wins} A, 1 ties; 3 votes" in stats
    assert str(micro_dpo) in revealed


def test_keyboard_shortcuts_rank_undo_tie_and_skip(browser, micro_sft: Path, tmp_path: Path) -> None:
    """1...K rank, Enter submits, u undoes, t calls a tie, s skips, as labelling tools do; through the
    token link of an annotator named on the command line."""
    from selenium.webdriver.common.action_chains import ActionChains

    rankings = tmp_path / "rankings.jsonl"
    label = [
        "label",
        "--model",
        micro_sft,
        "--data",
        PROMPTS,
        "--limit",
        "3",
        "--k",
        "3",
        "--annotators",
        "ada",
    ]
    with server(*label, "--output", rankings, "--max-new-tokens", "12") as url:
        browser.get(url)
        wait_for_text(browser, "progress", "0 / 3")

        def keys(*pressed: str) -> None:
            for key in pressed:
                ActionChains(browser).send_keys(key).perform()

        from selenium.webdriver.common.keys import Keys

        keys("2", "3", "u", "1", "3")
        assert "#2" in browser.find_element("id", "response-0").text
        keys(Keys.ENTER)
        wait_for_text(browser, "progress", "1 / 3")
        keys("t")
        wait_for_text(browser, "progress", "2 / 3")
        keys("s")
        wait_for_text(browser, "prompt", "All done")
    rows = [json.loads(line) for line in rankings.read_text().splitlines()]
    assert [(r["judgement"], r.get("ranking")) for r in rows] == [
        ("ranking", [1, 0, 2]),
        ("tie", None),
        ("skip", None),
    ]
    assert {r["annotator"] for r in rows} == {"ada"}
