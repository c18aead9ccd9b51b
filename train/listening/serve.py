"""Serve an experiment's pages to listeners: ``python train/listen.py serve EXPERIMENT``.

Gradio does the serving, the audio players, sliders and choices, and each browser session's
state; this module only lays out the four kinds of page and stores each submitted page with
:func:`train.listening.answers.write_answer` (atomically, one file per page). It listens on
127.0.0.1 unless another address is asked for, never in debug mode, never through Gradio's share
tunnel: nothing leaves the machine. A listener who comes back under the same name continues
after the last page they submitted.

Blind and randomised per listener: pages are shuffled within each block, and the conditions of a
page are put in slots A, B, C ... in an order drawn from the listener's name and the
experiment's seed; the audio files have opaque names (:mod:`train.listening.experiment`).
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

from train.listening.answers import ANSWERS, EXPERIMENT, ListeningDataError, write_answer

BLOCK_ORDER = ("mushra", "ab", "acr", "same_different")
ACR_CHOICES = ["1 bad", "2 poor", "3 fair", "4 good", "5 excellent"]
AB_CHOICES = ["A", "B", "no preference"]
SD_CHOICES = ["same", "different"]


def pages(experiment: dict[str, Any], listener: str) -> list[dict[str, Any]]:
    """This listener's pages in order, each with its id, block, and conditions in slot order."""
    draw = random.Random(f"{experiment.get('seed', 0)}:{listener}")
    out = []
    for block in BLOCK_ORDER:
        specs = list(enumerate(experiment["blocks"].get(block, [])))
        draw.shuffle(specs)
        for number, spec in specs:
            page = {"id": f"{block}-{number:03d}", "block": block, **spec}
            if block == "mushra":
                page["slots"] = sorted(experiment["conditions"], key=lambda _: draw.random())
            elif block == "ab":
                page["slots"] = draw.sample(spec["pair"], 2)
            out.append(page)
    return out


def build_app(folder: str | Path) -> Any:
    """The Gradio app of an experiment folder."""
    import gradio as gr

    folder = Path(folder).resolve()
    try:
        experiment = json.loads((folder / EXPERIMENT).read_text())
    except (OSError, ValueError) as err:
        raise ListeningDataError(f"{folder / EXPERIMENT}: cannot read the experiment ({err})") from None
    trials = {t["id"]: t for t in experiment["trials"]}
    slots = len(experiment["conditions"])
    letters = string.ascii_uppercase[:slots]

    def audio(trial: str, condition: str) -> str:
        return str(folder / trials[trial]["audio"][condition])

    def show(state: dict[str, Any]) -> list[Any]:
        """Every component's update for the listener's current page (or the last page)."""
        todo = state["pages"][state["position"] :]
        page = todo[0] if todo else None
        block = page["block"] if page else "done"
        progress = f"Page {state['position'] + 1} of {len(state['pages'])}" if page else ""
        updates: list[Any] = [gr.update(visible=False), gr.update(value=progress, visible=page is not None)]
        updates += [gr.update(visible=block == b) for b in (*BLOCK_ORDER, "done")]
        for i in range(slots):  # MUSHRA slots
            shown = block == "mushra" and i < len(page["slots"])
            updates.append(gr.update(value=audio(page["trial"], page["slots"][i]) if shown else None, visible=shown))
            updates.append(gr.update(value=50, visible=shown))
        if block == "ab":
            updates += [gr.update(value=audio(page["trial"], c)) for c in page["slots"]] + [gr.update(value=None)]
        else:
            updates += [gr.update(), gr.update(), gr.update()]
        if block == "acr":
            updates += [gr.update(value=audio(page["trial"], page["condition"])), gr.update(value=None)]
        else:
            updates += [gr.update(), gr.update()]
        if block == "same_different":
            voice = audio(page["reference_trial"], "reference")
            updates += [gr.update(value=voice), gr.update(value=audio(page["trial"], page["condition"])),
                        gr.update(value=None)]  # fmt: skip
        else:
            updates += [gr.update(), gr.update(), gr.update()]
        return [state, *updates]

    def start(name: str) -> list[Any]:
        name = name.strip()
        try:
            if not name:
                raise ListeningDataError("enter your name first")
            order = pages(experiment, name)
            done = {p.stem for p in (folder / ANSWERS / name).glob("*.json")}
        except ListeningDataError as err:
            raise gr.Error(str(err)) from None
        position = next((i for i, p in enumerate(order) if p["id"] not in done), len(order))
        return show({"listener": name, "pages": order, "position": position})

    def submit(state: dict[str, Any], body: dict[str, Any]) -> list[Any]:
        page = state["pages"][state["position"]]
        try:
            answer = {"block": page["block"], "trial": page["trial"], **body}
            write_answer(folder, state["listener"], page["id"], answer)
        except ListeningDataError as err:
            raise gr.Error(str(err)) from None
        return show({**state, "position": state["position"] + 1})

    def submit_mushra(state: dict[str, Any], *ratings: float) -> list[Any]:
        page = state["pages"][state["position"]]
        return submit(state, {"ratings": {c: float(r) for c, r in zip(page["slots"], ratings, strict=False)}})

    def submit_ab(state: dict[str, Any], choice: str | None) -> list[Any]:
        if choice is None:
            raise gr.Error("choose A, B or no preference")
        page = state["pages"][state["position"]]
        chosen = "none" if choice == "no preference" else page["slots"][AB_CHOICES.index(choice)]
        return submit(state, {"pair": page["pair"], "choice": chosen})

    def submit_acr(state: dict[str, Any], choice: str | None) -> list[Any]:
        if choice is None:
            raise gr.Error("choose a score from 1 to 5")
        page = state["pages"][state["position"]]
        return submit(state, {"condition": page["condition"], "score": ACR_CHOICES.index(choice) + 1})

    def submit_sd(state: dict[str, Any], choice: str | None) -> list[Any]:
        if choice is None:
            raise gr.Error("choose same or different")
        page = state["pages"][state["position"]]
        return submit(state, {"condition": page["condition"], "truth": page["truth"], "answer": choice})

    with gr.Blocks(title="Listening test", analytics_enabled=False) as app:
        state = gr.State({})
        gr.Markdown("# Listening test\nUse headphones in a quiet room, at one volume for the whole test.")
        with gr.Group(visible=True) as welcome:
            name = gr.Textbox(label="Your name", elem_id="listener-name")
            begin = gr.Button("Start", elem_id="start")
        progress = gr.Markdown(visible=False, elem_id="progress")
        with gr.Column(visible=False) as mushra:
            gr.Markdown("**MUSHRA**: one sample is the hidden reference: rate it 100. Rate the others 0-100 "
                        "for how close they sound to it.")  # fmt: skip
            mushra_parts = []
            for letter in letters:
                with gr.Row():
                    player = gr.Audio(label=f"Sample {letter}", interactive=False, elem_id=f"mushra-audio-{letter}")
                    slider = gr.Slider(0, 100, value=50, step=1, label=f"Rating {letter}",
                                       elem_id=f"mushra-rating-{letter}")  # fmt: skip
                mushra_parts += [player, slider]
            mushra_submit = gr.Button("Submit", elem_id="mushra-submit")

        def choice_page(key: str, intro: str, players: list[str], choices: list[str], label: str) -> tuple:
            """A page of audio players (``#<key>-<player>``), one choice (``#<key>-choice``) and a submit button."""
            with gr.Column(visible=False) as column:
                gr.Markdown(intro)
                audios = [gr.Audio(label=p, interactive=False, elem_id=f"{key}-{p.lower()}") for p in players]
                choice = gr.Radio(choices, label=label, elem_id=f"{key}-choice")
                button = gr.Button("Submit", elem_id=f"{key}-submit")
            return column, audios, choice, button

        ab, (ab_a, ab_b), ab_choice, ab_submit = choice_page(
            "ab", "**A/B**: which sounds better?", ["A", "B"], AB_CHOICES, "Better"
        )
        acr, (acr_audio,), acr_choice, acr_submit = choice_page(
            "acr", "**Naturalness**: how natural does it sound?", ["Sample"], ACR_CHOICES, "Score"
        )
        same_different, (sd_voice, sd_sample), sd_choice, sd_submit = choice_page(
            "sd", "**Same speaker?** Do the two samples come from the same person?", ["Voice", "Sample"],
            SD_CHOICES, "Speaker",
        )  # fmt: skip
        with gr.Column(visible=False) as done:
            gr.Markdown("Thank you: every page is saved.", elem_id="done")
        outputs = [state, welcome, progress, mushra, ab, acr, same_different, done, *mushra_parts,
                   ab_a, ab_b, ab_choice, acr_audio, acr_choice, sd_voice, sd_sample, sd_choice]  # fmt: skip
        begin.click(start, [name], outputs)
        mushra_submit.click(submit_mushra, [state, *mushra_parts[1::2]], outputs)
        ab_submit.click(submit_ab, [state, ab_choice], outputs)
        acr_submit.click(submit_acr, [state, acr_choice], outputs)
        sd_submit.click(submit_sd, [state, sd_choice], outputs)
    return app


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve until interrupted (never in debug mode, never shared through a tunnel)."""
    app = build_app(folder)
    print(f"listening test of {Path(folder).resolve()} at http://{host}:{port}/  (Ctrl-C stops it)", flush=True)
    app.launch(server_name=host, server_port=port, share=False, debug=False, quiet=True,
               allowed_paths=[str(Path(folder).resolve())])  # fmt: skip
