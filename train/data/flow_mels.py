"""Flow mels as training data: the ``data.flow`` settings, references, and the text source.

Two ways to make the mels Chatterbox's ``mel2wav`` is really fed (``data.mel_source``):

* ``flow``: teacher-forced from a recorded corpus. Each clip's own speech tokens, a reference
  from **another** clip of the same speaker, the flow (:func:`train.s3gen.flow.teacher_forced`).
  The speaker is the clip's folder unless ``speaker_pattern`` says otherwise (a regular
  expression on the clip's path inside its folder; its first group names the speaker). The
  reference is chosen by rendezvous hashing among the speaker's other clips that are at least
  ``min_reference_seconds`` long: the same for the same clips in every run, and adding a clip to
  a speaker changes the reference of few others. A speaker with no other usable clip has the
  clip itself as its reference (the stated fallback, counted and named in the log); its flow
  mel then conditions on its own audio. References above 10 s are cut to their first 10 s, as
  Chatterbox's conditionals are, and the log says so.
* ``text``: no corpus at all. Each line of ``text_file`` is voiced by the family's T3 (the
  TTS class's own ``generate``: its text normalisation, classifier-free guidance and sampling
  settings, seeded; the multilingual model with ``language``) with a reference voice picked
  from ``voices_dir`` (the training audio folders when unset, never ``val_dirs``) by the same
  hashing; its speech tokens are cached, then the flow makes the mel. Only the teacher's waveform can be the target.

Every entry is keyed by what it is made from: the clip's (or line's) content, the reference's
content, the checkpoint file's content, the family, the step count and the seed (and, for text,
the T3 files' content, the language and ``max_tokens``); changing anything else reuses it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from safetensors import safe_open
from torch import Tensor

from train.evaluation.watermark import perth_for_chatterbox
from train.s3gen.flow import (
    FAMILIES,
    MAX_REFERENCE_SECONDS,
    Family,
    FlowError,
    check_family,
    check_parts,
    flow_mel,
    load_s3gen,
    reference,
    seeded,
    teacher_forced,
)
from train.s3gen.teacher import LOCAL_HINT, read_checkpoint
from train.utils.devices import resolve_device
from vocos_distill.config import SAMPLE_RATE
from vocos_distill.errors import ConfigError, MissingFileError
from vocos_distill.files import atomic_write_text
from vocos_distill.hub import fetch_file

log = logging.getLogger(__name__)

FLOW_VERSION = "s3gen-flow-v1:finalize:whole-tokens"
TEXT_VERSION = "t3-tokens-v1"
SPEAKER_PATTERN = r"^(.*)/[^/]*$"  # the clip's folder
SILENCE_DBFS = -60.0  # a clip whose RMS level is below this is silent


@dataclass(frozen=True)
class Line:
    """One sentence of a text file: ``number`` counts from 1, as editors do."""

    file: Path
    number: int
    text: str

    @property
    def name(self) -> str:
        return f"{self.file.name}:{self.number}"


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def level_dbfs(audio: Tensor) -> float:
    return 10 * torch.log10(audio.float().pow(2).mean().clamp_min(1e-20)).item()


def checkpoint_keys(path: Path) -> dict[str, None]:
    """The tensor names of a checkpoint, without reading its values."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            return dict.fromkeys(f.keys())
    return dict.fromkeys(read_checkpoint(path, mmap=True)[0])


class ModelUnavailableError(ConfigError):
    """Chatterbox's models cannot be built from the checkpoint folder: the run stops (it is no
    one line's or clip's fault, so nothing is skipped for it)."""


class FileIdentities:
    """``path -> content hash`` of weight files, remembered by (size, mtime) in
    ``<cache>/manifests/weights.json`` so that a 1 GB checkpoint is read once, not every run."""

    def __init__(self, cache_root: str | Path) -> None:
        self.path = Path(cache_root) / "manifests" / "weights.json"

    def __call__(self, file: Path) -> str:
        file = file.resolve()
        stat = file.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        try:
            known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            known = {}
        entry = known.get(str(file))
        if isinstance(entry, list) and entry[:2] == stamp:
            return entry[2]
        sha = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                sha.update(block)
        value = sha.hexdigest()[:32]
        known[str(file)] = [*stamp, value]
        try:
            atomic_write_text(self.path, json.dumps(known, indent=1))
        except OSError as err:  # a read-only cache: hashed again next time
            log.warning("could not update %s: %s", self.path, err)
        return value


def rendezvous(key: str, candidates: Iterable[tuple[str, Any]]) -> Any | None:
    """The candidate whose hash with ``key`` is lowest (``(its key, value)`` pairs), or None."""
    ranked = sorted(candidates, key=lambda c: hashlib.sha1(f"{key}:{c[0]}".encode()).hexdigest())
    return ranked[0][1] if ranked else None


class FlowMels:
    """How flow mels are made (the ``data.flow`` node); loads nothing until a mel is missing.

    Args:
        checkpoint: the local S3Gen file (the configs: ``teacher.checkpoint``); ``None`` fetches
            ``filename`` of ``repo_id`` from the Hub (the family's own file when ``filename`` is None).
        family: ``auto`` (from the file: a meanflow flow is ``turbo``, a ``.pt`` file ``multilingual``,
            else ``chatterbox``), or one of them, checked against the file.
        steps: CFM steps; ``None``: the family's own (10, Turbo 2). Another count is refused.
        seed: seeds the flow's noise and T3's sampling, per entry.
        speaker_pattern: regular expression on a clip's path inside its folder; group 1 is the speaker.
        min_seconds: clips shorter than this (after cutting to whole tokens) are skipped.
        min_reference_seconds: shorter clips are not used as another clip's reference.
        text_file: the text source's sentences, one a line (blank lines and ``#`` lines skipped).
        voices_dir: reference clips for the text source; ``None``: the clips of ``data.audio_dirs``
            (never ``val_dirs``).
        language: the multilingual model's language id (``en``, ``fr``, ...), for the text source.
        max_tokens: the most speech tokens T3 makes for one line (Chatterbox's own limit, 1000).
        device: where S3Gen and T3 run (``auto``: CUDA when available).
    """

    def __init__(
        self,
        *,
        checkpoint: str | None = None,
        repo_id: str = "ResembleAI/chatterbox",
        filename: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        family: str = "auto",
        steps: int | None = None,
        seed: int = 0,
        speaker_pattern: str = SPEAKER_PATTERN,
        min_seconds: float = 0.5,
        min_reference_seconds: float = 0.5,
        text_file: str | None = None,
        voices_dir: str | None = None,
        language: str | None = None,
        max_tokens: int = 1000,
        device: str = "auto",
    ) -> None:
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint else None
        self.repo_id, self.filename, self.revision = repo_id, filename, revision
        self.local_files_only = local_files_only
        self.family_name = family
        self.steps = steps
        self.seed = seed
        try:
            self.speaker_pattern = re.compile(speaker_pattern)
        except re.error as err:
            raise ConfigError(
                f"data.flow.speaker_pattern={speaker_pattern!r}: not a regular expression ({err})"
            ) from None
        self.min_seconds = min_seconds
        self.min_reference_seconds = min_reference_seconds
        self.text_file = Path(text_file).expanduser() if text_file else None
        self.voices_dir = Path(voices_dir).expanduser() if voices_dir else None
        self.language = language
        self.max_tokens = max_tokens
        self.device = device
        self._path: Path | None = None
        self._family: Family | None = None
        self._model: Any = None
        self._tts: Any = None
        self._identity: dict[str, str] = {}
        self._voice: Path | None = None
        self._voice_files: list[Path] | None = None
        self.self_referenced: list[str] = []  # clips that are their own reference (see :meth:`references`)

    # -- the checkpoint -------------------------------------------------------------
    def path(self) -> Path:
        """The S3Gen file, fetched (or taken from the Hugging Face cache) when not local."""
        if self._path is None:
            if self.checkpoint is not None:
                if not self.checkpoint.is_file():
                    raise MissingFileError(f"S3Gen checkpoint not found: {self.checkpoint}. {LOCAL_HINT}")
                self._path = self.checkpoint
            else:
                wanted = FAMILIES.get(self.family_name)
                filename = self.filename or (wanted.filename if wanted else "s3gen.safetensors")
                self._path = fetch_file(
                    self.repo_id,
                    filename,
                    revision=self.revision,
                    local_files_only=self.local_files_only,
                    hint=LOCAL_HINT,
                )
        return self._path

    def family(self) -> Family:
        """The checkpoint's family, checked against the settings: what a file lacks or a
        contradiction is an error here, before any work."""
        if self._family is None:
            keys = checkpoint_keys(self.path())
            check_parts(keys, self.path())
            self._family = check_family(keys, self.path(), self.family_name, self.steps)
        return self._family

    def identity(self, cache_root: Path, *files: Path) -> str:
        """Content hash of the checkpoint (and ``files``), with the family, steps and seed."""
        names = [self.path(), *files]
        key = "|".join(str(p) for p in names)
        if key not in self._identity:
            hashes = FileIdentities(cache_root)
            family = self.family()
            self._identity[key] = digest(*(hashes(p) for p in names), family.name, str(family.steps), str(self.seed))
        return self._identity[key]

    def model(self) -> Any:
        """Chatterbox's S3Gen with the checkpoint's weights (loaded on first use)."""
        if self._model is None:
            if self._tts is not None:
                self._model = self._tts.s3gen
            else:
                log.info("loading S3Gen's flow from %s (%s)", self.path(), self.family().name)
                self._model = load_s3gen(self.path(), self.family().name, self.steps, self.device)
        return self._model

    # -- the corpus source ----------------------------------------------------------
    def speaker(self, relative: str) -> str:
        """The speaker of a clip at ``relative`` (its path inside its folder)."""
        match = self.speaker_pattern.search(relative.replace("\\", "/"))
        return (match.group(1) if match and match.groups() else match.group(0) if match else "") or ""

    def references(self, clips: Sequence[tuple[str, str, float]]) -> dict[str, str]:
        """``clip key -> reference key`` for clips ``(relative path, content key, seconds)`` of
        one folder: another clip of the same speaker, or the clip itself when it has none."""
        speakers: dict[str, list[tuple[str, str, float]]] = {}
        for clip in clips:
            speakers.setdefault(self.speaker(clip[0]), []).append(clip)
        chosen, alone = {}, []
        for members in speakers.values():
            usable = [(key, key) for _, key, seconds in members if seconds >= self.min_reference_seconds]
            for rel, key, _ in members:
                other = rendezvous(key, [c for c in usable if c[0] != key])
                if other is None:
                    alone.append(rel)
                chosen[key] = other or key
        if alone:
            log.warning(
                "data.flow: %d clip(s) have no other clip of their speaker at least %.1f s long to be their "
                "reference, so each is its own (data.flow.speaker_pattern decides the speaker): %s%s",
                len(alone),
                self.min_reference_seconds,
                ", ".join(sorted(alone)[:5]),
                " ..." if len(alone) > 5 else "",
            )
        self.self_referenced = sorted(alone)
        return chosen

    def corpus_key(self, cache_root: Path, clip_key: str, reference_key: str) -> str:
        return digest(FLOW_VERSION, clip_key, reference_key, self.identity(cache_root))

    def teacher_forced(self, clip: Tensor, ref: Tensor, name: str, ref_name: str) -> dict[str, Tensor]:
        """The flow mel entry of a 24 kHz clip with a 24 kHz reference (see :mod:`train.s3gen.flow`)."""
        seconds = clip.shape[-1] / SAMPLE_RATE
        if seconds < self.min_seconds:
            raise ValueError(f"{seconds:.2f} s is shorter than data.flow.min_seconds={self.min_seconds}")
        if level_dbfs(clip) < SILENCE_DBFS:
            raise ValueError(f"silent (RMS {level_dbfs(clip):.0f} dBFS, below {SILENCE_DBFS:.0f})")
        model = self.model()
        with torch.inference_mode():
            return teacher_forced(model, clip, self.reference(ref, ref_name), self.seed)

    def reference(self, ref: Tensor, name: str) -> dict[str, Tensor]:
        seconds = ref.shape[-1] / SAMPLE_RATE
        if seconds > MAX_REFERENCE_SECONDS:
            log.info("reference %s is %.1f s: its first %.0f s are used, as Chatterbox does", name, seconds,
                     MAX_REFERENCE_SECONDS)  # fmt: skip
        return reference(self.model(), ref)

    # -- the text source ------------------------------------------------------------
    def lines(self) -> list[Line]:
        """The text file's sentences (blank and ``#`` lines skipped)."""
        if self.text_file is None:
            raise ConfigError("data.mel_source includes text, but data.flow.text_file is not set")
        if not self.text_file.is_file():
            raise MissingFileError(f"data.flow.text_file: not found: {self.text_file}")
        try:
            text = self.text_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"data.flow.text_file {self.text_file}: not UTF-8 text ({err})") from None
        out = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(Line(self.text_file, number, line.strip()))
        if not out:
            raise ConfigError(f"data.flow.text_file {self.text_file}: no sentences in it")
        return out

    def voice_files(self) -> list[Path]:
        """The T3 bundle's files beside the S3Gen checkpoint (their content is in the text keys);
        the folder is listed once."""
        if self._voice_files is not None:
            return self._voice_files
        family = self.family()
        folder = self.path().parent
        files = [folder / family.voice]
        files += [p for p in sorted(folder.iterdir()) if p.suffix == ".json" or p.name in ("ve.safetensors", "ve.pt")]
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise MissingFileError(
                f"data.mel_source=text needs Chatterbox's T3 beside {self.path()}: {', '.join(missing)} not found "
                f"there (the {family.name} checkpoint folder as {family.repo_id} ships it)"
            )
        self._voice_files = files
        return files

    def tokens_key(self, cache_root: Path, line: Line, voice_key: str) -> str:
        return digest(TEXT_VERSION, line.text, self.language or "", voice_key, str(self.max_tokens),
                      self.identity(cache_root, *self.voice_files()))  # fmt: skip

    def mel_key(self, cache_root: Path, tokens_key: str) -> str:
        return digest(FLOW_VERSION, "text", tokens_key, self.identity(cache_root))

    def tts(self) -> Any:
        """The family's Chatterbox TTS, from the checkpoint's folder (``from_local``)."""
        if self._tts is None:
            module, name = self.family().tts.split(":")
            cls = getattr(importlib.import_module(module), name)
            log.info("loading %s from %s", name, self.path().parent)
            try:
                with perth_for_chatterbox():
                    self._tts = cls.from_local(self.path().parent, str(resolve_device(self.device)))
            except (OSError, RuntimeError, KeyError, AssertionError) as err:  # not one line's fault: stop
                raise ModelUnavailableError(
                    f"{name}.from_local({self.path().parent}) failed: {type(err).__name__}: {err}"
                ) from err
            self._tts.s3gen.family = self.family()
            self._model = self._tts.s3gen
        return self._tts

    def condition(self, voice: Path) -> Any:
        """The TTS, conditioned on ``voice`` (Chatterbox's ``prepare_conditionals``; it keeps the
        first 10 s for S3Gen and 6 s for T3)."""
        tts = self.tts()
        if self._voice != voice:
            tts.prepare_conditionals(str(voice))
            self._voice = voice
        return tts

    def text_tokens(self, line: Line, voice: Path) -> Tensor:
        """T3's speech tokens for one line in ``voice``, as the TTS's ``generate`` makes them
        (seeded; at most ``max_tokens``): generate runs unchanged up to the point where it
        hands its tokens to S3Gen, which is where they are taken."""
        tts = self.condition(voice)
        made: list[Tensor] = []

        class Taken(Exception):
            pass

        def take(speech_tokens, *args, **kwargs):
            made.append(torch.atleast_1d(speech_tokens).reshape(-1))
            raise Taken

        def limit(call):
            def limited(*args, **kwargs):
                kwargs["max_new_tokens"] = min(kwargs.get("max_new_tokens", self.max_tokens), self.max_tokens)
                return call(*args, **kwargs)

            return limited

        wrapped = [name for name in ("inference", "inference_turbo") if hasattr(tts.t3, name)]
        for name in wrapped:
            setattr(tts.t3, name, limit(getattr(tts.t3, name)))
        tts.s3gen.inference = take
        try:
            with seeded(self.seed, tts.s3gen.device):
                kwargs = {"language_id": self.language} if self.family().name == "multilingual" else {}
                tts.generate(line.text, **kwargs)
        except Taken:
            pass
        finally:
            del tts.s3gen.inference
            for name in wrapped:
                delattr(tts.t3, name)
        if not made or made[0].numel() == 0:
            raise ValueError("T3 made no speech tokens for it")
        return made[0].long().cpu()

    def text_mel(self, tokens: Tensor, voice: Path) -> Tensor:
        """The flow mel of T3's tokens in ``voice``."""
        tts = self.condition(voice)
        return flow_mel(tts.s3gen, tokens.unsqueeze(0), tts.conds.gen, self.seed)


def voice_for(line_key: str, voices: Mapping[str, Path]) -> tuple[str, Path]:
    """The reference voice of a line: ``(its content key, its path)``, by rendezvous hashing."""
    chosen = rendezvous(line_key, [(key, (key, path)) for key, path in voices.items()])
    if chosen is None:
        raise FlowError("data.mel_source=text: no reference voice (data.flow.voices_dir, or the audio folders)")
    return chosen


def duration(path: Path) -> float:
    """Seconds of an audio file, from its header."""
    info = sf.info(str(path))
    return info.frames / info.samplerate
