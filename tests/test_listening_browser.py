"""A whole listening test taken in headless Chromium by scripted listeners, through the served pages."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO
from test_listening import fake_release

from train.listening.aggregate import aggregate
from train.listening.experiment import make_experiment

# The scripted listener's ratings, by condition (the page never says which slot is which: the
# script reads the opaque file name each player serves and looks it up in experiment.json)
MUSHRA = {"reference": 100, "hift": 80, "student": 70, "griffin_lim": 40, "lp35": 20}
ACR = {"reference": "5 excellent", "hift": "4 good", "student": "4 good", "griffin_lim": "2 poor"}


# What the page shows: "done", the progress line of a page ("Page 3 of 14"), or null in between
SHOWN = """(() => {
  const done = document.querySelector('#done');
  if (done && done.offsetParent !== null) return 'done';
  const progress = document.querySelector('#progress');
  const text = progress && progress.offsetParent !== null ? progress.innerText.trim() : '';
  return text.startsWith('Page') ? text : null;
})()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """``train/listen.py serve`` on an experiment made from a fake release (subprocess, 127.0.0.1)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's package)")
    release = fake_release(tmp_path / "student", student_gain=1.0)
    folder = make_experiment(tmp_path / "experiment", [release], utterances=2, seed=1)
    port = free_port()
    log = (tmp_path / "server.log").open("w")  # a file, not a pipe nobody reads: a full pipe would stall it
    server = subprocess.Popen([sys.executable, str(REPO / "train" / "listen.py"), "serve", str(folder),
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
    yield folder, url, browser
    server.terminate()
    server.wait(timeout=30)
    log.close()
    assert "127.0.0.1" in (tmp_path / "server.log").read_text()  # it said where it listens


def condition_of(folder: Path) -> dict[str, str]:
    """Opaque file name -> condition, from the experiment's own description."""
    experiment = json.loads((folder / "experiment.json").read_text())
    return {Path(p).name: c for t in experiment["trials"] for c, p in t["audio"].items()}


def served_condition(page, selector: str, names: dict[str, str]) -> str:
    return names[page.locator(f"{selector} a.download-link").get_attribute("download")]


def take_test(page, url: str, listener: str, names: dict[str, str], reference_rating=100, stop_after=None) -> int:
    """Go through the pages as a listener; returns how many were submitted."""
    page.goto(url)
    page.locator("#listener-name textarea, #listener-name input").first.fill(listener)
    page.locator("#start").click()
    submitted = 0
    while True:
        page.wait_for_function(f"() => {SHOWN} !== null")
        if page.evaluate(f"() => {SHOWN}") == "done":
            return submitted
        # every component the last event updated has settled (Gradio covers pending ones)
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=status-tracker]')]"
            ".every(e => e.classList.contains('hide') || e.offsetParent === null)"
        )
        if stop_after is not None and submitted == stop_after:
            return submitted
        before = page.locator("#progress").inner_text()
        if page.locator("#mushra-submit").is_visible():
            for letter in "ABCDEFGH":
                slot = f"#mushra-audio-{letter}"
                if not page.locator(slot).is_visible():
                    break
                condition = served_condition(page, slot, names)
                role = "student" if condition not in MUSHRA else condition
                rating = reference_rating if role == "reference" else MUSHRA[role]
                number = page.locator(f"#mushra-rating-{letter} input[type=number]")
                number.fill(str(rating))
                number.press("Enter")
            page.locator("#mushra-submit").click()
        elif page.locator("#ab-submit").is_visible():
            a = served_condition(page, "#ab-a", names)  # the script always prefers the student
            page.locator("#ab-choice").get_by_label("A" if a not in ("hift", "reference") else "B", exact=True).check()
            page.locator("#ab-submit").click()
        elif page.locator("#acr-submit").is_visible():
            condition = served_condition(page, "#acr-sample", names)
            page.locator("#acr-choice").get_by_label(ACR.get(condition, ACR["student"]), exact=True).check()
            page.locator("#acr-submit").click()
        else:
            page.locator("#sd-choice").get_by_label("same", exact=True).check()
            page.locator("#sd-submit").click()
        page.wait_for_function(f"(before) => {{ const shown = {SHOWN}; return shown !== null && shown !== before; }}",
                               arg=before)  # fmt: skip
        submitted += 1


@pytest.mark.slow
def test_scripted_listeners_take_the_whole_test_in_chromium(served, tmp_path):
    from playwright.sync_api import sync_playwright

    folder, url, browser = served
    names = condition_of(folder)
    pages = sum(len(v) for v in json.loads((folder / "experiment.json").read_text())["blocks"].values())
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chromium.new_page(viewport={"width": 1100, "height": 1400})
        page.set_default_timeout(60_000)  # a loaded 2-core machine
        # ann stops after three pages (a closed tab), comes back and finishes where she left off
        assert take_test(page, url, "ann", names, stop_after=3) == 3
        assert take_test(page, url, "ann", names) == pages - 3
        # bob rates the hidden reference at 20 on both MUSHRA pages, then leaves
        assert take_test(page, url, "bob", names, reference_rating=20, stop_after=2) == 2
        chromium.close()
    assert len(list((folder / "answers" / "ann").glob("*.json"))) == pages
    section = aggregate(folder)
    assert [e["listener"] for e in section["excluded"]] == ["bob"]
    assert {c: s["mean"] for c, s in section["mushra"].items()} == {
        "reference": 100, "hift": 80, "student": 70, "griffin_lim": 40, "lp35": 20
    }  # fmt: skip
    assert section["mos"]["reference"]["mean"] == 5 and section["mos"]["student"]["mean"] == 4
    assert [(row["pair"], row["chosen"]) for row in section["ab"]] == [(["hift", "student"], {"hift": 0, "student": 2})]
    gates = {g["name"]: g["status"] for g in section["gates"]}
    assert gates == {"mos_degradation": "pass", "ab_not_worse": "pass"}  # the script never prefers HiFT
