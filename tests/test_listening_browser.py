"""A whole listening test taken in headless Chromium by scripted listeners, through the served page.

The scripts cannot hear: they play every sound (as the server requires) and answer from the
experimenter's files, the way a test harness may. ``ann`` passes the headphone check and takes
every page, closing her tab once and coming back by her resume link; ``bob`` fails the headphone
check, and is screened out.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from test_listening import fake_release
from test_listening_server import Served

from train.listening.aggregate import aggregate
from train.listening.experiment import make_experiment
from train.listening.serve import Study

MUSHRA = {"reference": 100, "hift": 80, "student": 70, "griffin_lim": 40, "lp35": 20}
ACR = {"reference": 5, "hift": 4, "student": 4, "griffin_lim": 2}
LETTERS = "ABCDEFGHIJKLMNOP"
# LISTENING_SCREENSHOTS=docs/images: the pages as ann sees them, for docs/evaluation.md#listening-tests
SHOTS = os.environ.get("LISTENING_SCREENSHOTS")


def screenshot(page, name: str) -> None:
    if SHOTS and not (Path(SHOTS) / name).exists():
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


# What the page shows: the visible section's name
SHOWN = "(() => { const s = document.querySelector('section.shown'); return s ? s.id.slice(5) : null; })()"


@pytest.fixture
def served(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's package)")
    release = fake_release(tmp_path / "student", student_gain=1.0, count=4)
    folder = make_experiment(tmp_path / "experiment", [release], utterances=4, seed=1)
    server = Served(folder, tmp_path / "server.log")
    yield folder, f"http://127.0.0.1:{server.port}/", browser
    server.stop()
    assert "127.0.0.1" in (tmp_path / "server.log").read_text()  # it said where it listens


class Listener:
    """A scripted listener: knows each stimulus' condition from the experiment's secret."""

    def __init__(self, page, folder: Path, name: str, careless: bool = False) -> None:
        self.page, self.study, self.name, self.careless = page, Study(folder), name, careless
        self.experiment = json.loads((folder / "experiment.json").read_text())

    def condition(self, view: dict, sid: str) -> str:
        page = view["page"]
        for key in [*self.experiment["conditions"], "open-reference"]:
            if self.study.stimulus(self.name, page["id"], key) == sid:
                return key
        raise AssertionError(f"{sid} is no stimulus of {page['id']}")

    def wait_for_change(self, before: str) -> None:
        self.page.wait_for_function(
            "([before]) => { const v = window.currentView; const now = v ? v.position + ':' + "
            f"{SHOWN} : null; return now !== null && now !== before; }}",
            arg=[before],
        )

    def state(self) -> str:
        return self.page.evaluate(f"() => window.currentView ? window.currentView.position + ':' + {SHOWN} : null")

    def take(self, stop_after: int | None = None) -> int:
        """Answer pages until the end (or ``stop_after`` pages); returns how many were submitted."""
        submitted = 0
        while True:
            self.page.wait_for_function(f"() => {SHOWN} !== 'welcome' && {SHOWN} !== 'resume'")
            shown = self.page.evaluate(f"() => {SHOWN}")
            if shown == "done" or (stop_after is not None and submitted == stop_after):
                return submitted
            if shown == "break":  # a break is offered every 20 pages
                self.page.locator("#continue").click()
                self.page.wait_for_function(f"() => {SHOWN} !== 'break'")
                continue
            view = self.page.evaluate("() => window.currentView")
            before = self.state()
            getattr(self, shown.replace("-", "_"))(view)
            self.wait_for_change(before)
            submitted += 1

    def headphones(self, view: dict) -> None:
        trials = self.experiment["blocks"]["headphones"][0]["trials"]
        for i, trial in enumerate(trials):
            self.page.locator(f"#hp-play-{i}").click()
            answer = trial["quietest"] if not self.careless else trial["quietest"] % 3 + 1
            self.page.locator(f"input[name=hp-{i}][value='{answer}']").check()
        screenshot(self.page, "listening-headphones.png")
        self.page.locator("#hp-submit").click()

    def familiarisation(self, view: dict) -> None:
        assert self.page.locator("#fam-submit").is_disabled()  # nothing played yet
        self.page.locator("#fam-play-reference").click()
        for letter in LETTERS[: len(view["page"]["slots"])]:
            self.page.locator(f"#fam-play-{letter.lower()}").click()
        self.page.locator("#fam-submit").click()

    def mushra(self, view: dict) -> None:
        page = self.page
        slots = view["page"]["slots"]
        assert page.locator("#play-ref").is_visible()  # the open, labelled reference
        page.locator("#play-ref").click()
        for i, sid in enumerate(slots):
            page.locator(f"#mushra-play-{LETTERS[i].lower()}").click()
            # one sound at a time: the click stopped the one before
            assert page.locator("button.playing").count() == 1
            condition = self.condition(view, sid)
            role = "student" if condition not in MUSHRA else condition
            rating = MUSHRA[role]
            assert page.locator("#mushra-submit").is_disabled()  # until every slider is set
            page.locator(f"#rate-{LETTERS[i].lower()}").evaluate(
                "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", rating
            )
        page.locator("#loop").check()  # a loop over a chosen segment
        page.locator("#loop-start").fill("0.2")
        page.locator("#loop-end").fill("0.6")
        page.locator("#mushra-play-a").click()
        screenshot(page, "listening-mushra.png")
        page.locator("#stop").click()
        page.locator("#mushra-submit").click()

    def ab(self, view: dict) -> None:
        a, b = (self.condition(view, sid) for sid in view["page"]["slots"])
        self.page.locator("#play-a").click()
        self.page.locator("#play-b").click()
        self.page.locator(f"input[name=ab][value={'a' if a == 'student' else 'b'}]").check()  # prefers the student
        self.page.locator("#ab-submit").click()

    def acr(self, view: dict) -> None:
        condition = self.condition(view, view["page"]["sample"])
        self.page.locator("#play-sample").click()
        self.page.locator(f"input[name=acr][value='{ACR.get(condition, 4)}']").check()
        self.page.locator("#acr-submit").click()

    def sd(self, view: dict) -> None:
        self.page.locator("#play-voice").click()
        self.page.locator("#play-other").click()
        self.page.locator("input[name=sd][value=same]").check()
        self.page.locator("#sd-submit").click()


def begin(page, url: str, name: str) -> str:
    page.goto(url)
    page.locator("#name").fill(name)
    page.locator("#start").click()
    link = page.locator("#resume-link")
    link.wait_for()
    resume = link.get_attribute("href")
    page.locator("#resume-continue").click()
    return resume


@pytest.mark.slow
def test_two_scripted_listeners_take_the_test_in_chromium_and_one_is_screened_out(served):
    from playwright.sync_api import sync_playwright

    folder, url, browser = served
    experiment = json.loads((folder / "experiment.json").read_text())
    pages = 2 + sum(len(v) for k, v in experiment["blocks"].items() if k != "headphones")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=browser,
                                     args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])  # fmt: skip
        context = chromium.new_context(viewport={"width": 1000, "height": 1300})
        page = context.new_page()
        page.set_default_timeout(60_000)  # a loaded 2-core machine
        resume = begin(page, url, "ann")
        ann = Listener(page, folder, "ann")
        assert ann.take(stop_after=4) == 4
        page.close()  # a closed tab: ann comes back with her resume link, where she left off
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(resume)
        assert page.evaluate("() => location.hash") == ""  # the token is taken out of the address bar
        ann.page = page
        assert ann.take() == pages - 4
        # nothing about ann is left in the browser for the next person
        assert page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]") == [0, 0, ""]
        assert context.cookies() == []
        taken = page.context.new_page()
        taken.goto(url)
        taken.locator("#name").fill("ann")
        taken.locator("#start").click()
        taken.wait_for_function("() => document.querySelector('#error').innerText.includes('taken')")
        bob_page = context.new_page()
        bob_page.set_default_timeout(60_000)
        begin(bob_page, url, "bob")
        assert Listener(bob_page, folder, "bob", careless=True).take(stop_after=6) == 6
        chromium.close()
    assert len(list((folder / "answers" / "ann").glob("*.json"))) == pages
    section = aggregate(folder)
    excluded = {e["listener"]: e["why"] for e in section["excluded"]}
    assert list(excluded) == ["bob"] and "failed the headphone check (0 of 6 correct" in excluded["bob"]
    assert {c: s["mean"] for c, s in section["mushra"].items()} == {
        "reference": 100, "hift": 80, "student": 70, "griffin_lim": 40, "lp35": 20
    }  # fmt: skip
    assert section["mos"]["reference"]["mean"] == 5 and section["mos"]["student"]["mean"] == 4
    assert [(row["pair"], row["chosen"]) for row in section["ab"]] == [(["hift", "student"], {"hift": 0, "student": 4})]
    stored = json.loads(next((folder / "answers" / "ann").glob("mushra-*.json")).read_text())
    assert set(stored["plays"]) == set(experiment["conditions"]) and min(stored["plays"].values()) >= 1
    assert stored["reference_plays"] >= 1 and stored["seconds"] > 0
    gates = {g["name"]: g["status"] for g in section["gates"]}
    assert gates == {"mos_degradation": "insufficient", "ab_not_worse": "insufficient"}  # one screened listener
