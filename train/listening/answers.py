"""Listeners' answers to a listening test: one JSON file per submitted page, written atomically.

Layout under the experiment folder::

    experiment.json                  the conditions (name -> role) and the pages
    .secret                          what the server names stimuli by (never served)
    listeners/<listener>.json        a listener's resume token (its SHA-256) and when they started
    answers/<listener>/<page>.json   one submitted page

A page's answer names its ``block`` and ``trial`` (the utterance) and holds, by block:

* ``headphones``: ``responses`` (the tone chosen as quietest, 1..3, per trial), ``correct``,
  ``trials`` and ``passed`` (Woods et al. 2017's 5 of 6);
* ``familiarisation``: ``plays`` {condition: times played} of one MUSHRA trial, before rating;
* ``mushra``: ``ratings`` {condition: 0..100} for every condition of the trial (hidden
  reference and anchors included), and ``plays`` (every condition at least once);
* ``ab``: ``pair`` [condition, condition] and ``choice`` (one of them, or ``"none"``);
* ``acr``: ``condition`` and ``score`` 1..5 (absolute category rating of naturalness);
* ``same_different``: ``condition``, ``truth`` and ``answer`` (``"same"`` or ``"different"``):
  is the voice in the condition's clip the speaker of the reference clip?

Every page may also carry ``plays`` {condition: times played} and ``seconds`` (time on the page).

Because each page is its own file, a closed tab or a killed server loses at most the page in
progress, and a corrupt file is one listener's one page: reading names it and touches nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vocos_distill.errors import ConfigError
from vocos_distill.files import atomic_write_text

BLOCKS = ("headphones", "mushra", "ab", "acr", "same_different")  # an experiment's blocks, in page order
PAGES = (*BLOCKS, "familiarisation")  # what an answer file may be
ROLES = ("reference", "teacher", "student", "floor", "anchor")
EXPERIMENT = "experiment.json"
ANSWERS = "answers"
SECRET = ".secret"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ListeningDataError(ConfigError, ValueError):
    """An experiment or an answer file is missing, unreadable or malformed; the message names it."""


@dataclass(frozen=True)
class Answer:
    listener: str
    page: str
    block: str
    trial: str
    body: Mapping[str, Any]


def read_conditions(folder: Path) -> dict[str, str]:
    """``condition -> role`` from the experiment's ``experiment.json``."""
    path = folder / EXPERIMENT
    try:
        experiment = json.loads(path.read_text())
        conditions = {str(k): str(v["role"]) for k, v in experiment["conditions"].items()}
    except FileNotFoundError:
        raise ListeningDataError(f"{path}: no such file: {folder} is not a listening experiment") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ListeningDataError(f"{path}: not an experiment description ({type(err).__name__}: {err})") from None
    wrong = sorted(f"{k}: {v}" for k, v in conditions.items() if v not in ROLES)
    if wrong:
        raise ListeningDataError(f"{path}: conditions with unknown roles ({', '.join(wrong)}); roles: {ROLES}")
    return conditions


def _check(body: Any, path: Path, conditions: Mapping[str, str]) -> None:
    """A :class:`ListeningDataError` naming ``path`` and what is wrong with its answer."""

    def fail(why: str) -> None:
        raise ListeningDataError(f"{path}: {why}; this page's answer is left as it is, and no other is touched")

    if not isinstance(body, dict):
        fail("not a JSON object")
    block = body.get("block")
    if block not in PAGES:
        fail(f"block {block!r} is not one of {', '.join(PAGES)}")
    if not isinstance(body.get("trial"), str):
        fail("no trial")
    plays = body.get("plays", {})
    if not isinstance(plays, dict) or any(not isinstance(v, int) or isinstance(v, bool) or v < 0
                                          for v in plays.values()):  # fmt: skip
        fail("plays must map conditions to whole numbers of times played")
    seconds = body.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < 1e7:
        fail("seconds must be the time spent on the page")
    named = list(plays)
    if block == "headphones":
        responses, trials = body.get("responses"), body.get("trials")
        if (not isinstance(responses, list) or any(r not in (1, 2, 3) for r in responses)
                or not isinstance(trials, int) or len(responses) != trials
                or not isinstance(body.get("correct"), int) or not isinstance(body.get("passed"), bool)):  # fmt: skip
            fail("a headphone check needs responses (1..3 per trial), trials, correct and passed")
    elif block == "familiarisation":
        if not plays:
            fail("a familiarisation page needs plays")
    elif block == "mushra":
        ratings = body.get("ratings")
        if not isinstance(ratings, dict) or not ratings:
            fail("a MUSHRA page without ratings")
        if any(not isinstance(v, int | float) or not 0 <= v <= 100 for v in ratings.values()):
            fail("a MUSHRA rating outside 0..100")
        named += list(ratings)
    elif block == "ab":
        pair = body.get("pair")
        if not isinstance(pair, list) or len(pair) != 2 or body.get("choice") not in [*pair, "none"]:
            fail("an A/B page needs a pair of two conditions and a choice among them (or 'none')")
        named += list(pair)
    elif block == "acr":
        if body.get("score") not in (1, 2, 3, 4, 5):
            fail("an ACR score must be 1..5")
        named += [body.get("condition")]
    else:
        if body.get("truth") not in ("same", "different") or body.get("answer") not in ("same", "different"):
            fail("a same/different page needs truth and answer, each 'same' or 'different'")
        named += [body.get("condition")]
    unknown = [c for c in named if c not in conditions]
    if unknown:
        fail(f"conditions not in {EXPERIMENT}: {unknown}")


def read_answers(folder: str | Path) -> tuple[dict[str, str], list[Answer]]:
    """The experiment's conditions and every submitted page, checked; a file that is partial,
    corrupt or malformed is a :class:`ListeningDataError` naming it (read-only: nothing is changed)."""
    folder = Path(folder)
    conditions = read_conditions(folder)
    answers = []
    root = folder / ANSWERS
    for path in sorted(root.glob("*/*.json")) if root.is_dir() else []:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ListeningDataError(
                f"{path}: unreadable ({type(err).__name__}: {err}); a partial or corrupt answer file: "
                "move it aside to aggregate the others (nothing was changed)"
            ) from None
        _check(body, path, conditions)
        answers.append(Answer(path.parent.name, path.stem, body["block"], body["trial"], body))
    return conditions, answers


def check_name(value: str, what: str = "listener") -> str:
    """``value`` if it can name a listener (or page) folder, else a :class:`ListeningDataError` saying what can."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ListeningDataError(
            f"{what} {value!r}: use letters, digits, '.', '_' or '-' (at most 64, starting with a letter or digit), "
            "e.g. zoe.smith"
        )
    return value


def write_answer(folder: str | Path, listener: str, page: str, body: Mapping[str, Any]) -> Path:
    """Store one submitted page atomically (a later submission of the same page replaces it)."""
    check_name(listener)
    check_name(page, "page")
    folder = Path(folder)
    path = folder / ANSWERS / listener / f"{page}.json"
    _check(dict(body), path, read_conditions(folder))
    return atomic_write_text(path, json.dumps({**body, "listener": listener, "page": page}, indent=1))
