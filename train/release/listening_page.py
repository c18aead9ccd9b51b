"""``listen.html``: an A/B listening page of a release, ground truth / teacher / student per utterance.

Everything is relative to the page (``listen/<n>-<system>.wav``, ``listen/<n>-mels.png``), so it
works from ``file://``, from a Hub repo's file view once downloaded, or from any static server.
``listen/clips.json`` names each clip number's utterance and speaker (the utterance's folder, as
``data.flow``'s default ``speaker_pattern`` says), which a listening test's same/different-speaker
block needs (:mod:`train.listening.experiment`).
Each player shows its duration once the browser has read it (``data-duration``), which is also
what the page's test reads back from headless Chromium.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import soundfile
from torch import Tensor

from train.evaluation import plots
from train.s3gen.mel import S3GenMel
from vocos_distill.config import SAMPLE_RATE

PAGE = "listen.html"
FOLDER = "listen"
TITLES = {"audio": "ground truth", "teacher": "teacher (HiFT)"}
LABELS = "clips.json"


def speaker_of(utterance: str) -> str:
    """The speaker of an utterance named by its path inside its data folder (``flow:`` and the like
    stripped): its folder, or "" when it has none."""
    path = utterance.split(":", 1)[1] if re.match(r"^[a-z]+:", utterance) else utterance
    return path.rsplit("/", 1)[0] if "/" in path else ""


_SCRIPT = """
for (const audio of document.querySelectorAll("audio")) {
  const show = () => {
    if (!isFinite(audio.duration)) return;
    audio.dataset.duration = audio.duration.toFixed(3);
    audio.nextElementSibling.textContent = audio.duration.toFixed(2) + " s";
  };
  audio.addEventListener("loadedmetadata", show);
  audio.addEventListener("error", () => {
    audio.dataset.duration = "error";
    audio.nextElementSibling.textContent = "cannot play";
  });
  if (audio.readyState >= 1) show();
}
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1em; }
td, th { padding: .3em .8em; text-align: left; vertical-align: middle; }
tr + tr { border-top: 1px solid #ddd; }
img { max-width: 100%; }
.duration { color: #666; font-size: .9em; min-width: 4em; display: inline-block; margin-left: .5em; }
"""


def write_listening_page(
    folder: Path, utterances: Sequence[tuple[str, Mapping[str, Tensor]]], title: str, notes: str = ""
) -> list[Path]:
    """Write ``listen.html`` and its audio and images into ``folder``; return every file written.

    ``utterances``: ``(name, {system: wav (L,) at 24 kHz})``, systems in page order (``audio``
    and ``teacher`` are titled as such, others by their keys).
    """
    media = folder / FOLDER
    media.mkdir(parents=True, exist_ok=True)
    mel = S3GenMel()
    written, sections = [], []
    labels = {f"{i:02d}": {"utterance": name, "speaker": speaker_of(name)} for i, (name, _) in enumerate(utterances)}
    (media / LABELS).write_text(json.dumps(labels, indent=1))
    written.append(media / LABELS)
    for index, (name, wavs) in enumerate(utterances):
        rows = []
        for system, wav in wavs.items():
            slug = re.sub(r"[^a-z0-9]+", "-", system.lower()).strip("-")
            path = media / f"{index:02d}-{slug}.wav"
            soundfile.write(path, wav.detach().float().cpu().clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16")
            written.append(path)
            label = html.escape(TITLES.get(system, system))
            rows.append(
                f'<tr><th>{label}</th><td><audio controls preload="metadata" src="{FOLDER}/{path.name}"></audio>'
                '<span class="duration"></span></td></tr>'
            )
        image = media / f"{index:02d}-mels.png"
        mels = {TITLES.get(k, k): mel(w.float().cpu(), SAMPLE_RATE)[0] for k, w in wavs.items()}
        plots.save(plots.mel_comparison(name, mels), image)
        written.append(image)
        sections.append(
            f"<h2>{html.escape(name)}</h2>\n<table>{''.join(rows)}</table>\n"
            f'<img src="{FOLDER}/{image.name}" alt="S3Gen log-mels of {html.escape(name)}">'
        )
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{notes}\n"
        + "\n".join(sections)
        + f"\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )
    (folder / PAGE).write_text(page, encoding="utf-8")
    return [folder / PAGE, *written]
