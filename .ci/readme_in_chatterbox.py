"""README's "Use in Chatterbox" code as written, in the environment that runs this script.

Usage: python readme_in_chatterbox.py <README.md> <release folder> <mel.pt> <out.pt>
(.ci/chatterbox-pins copies it into a user's project folder, beside their own train.py and train/,
and runs it from there.)

Three things this machine cannot have are stood in for, as tests/test_chatterbox.py does:
Chatterbox's weights (``ChatterboxTTS.from_pretrained`` gives a model around chatterbox-tts'
real S3Gen with random weights), its T3 and flow (``generate`` runs ``s3gen.inference`` with the
flow's output set to the mel in ``mel.pt``; the vocoder call and S3Gen's fade run as Chatterbox
wrote them) and the trained release (the folder given). ``flow_chunks`` are chunks of that mel.
Writes what it heard, offline and streamed, and which runtime ``auto`` chose, to ``out.pt``, for
.ci/chatterbox-pins to compare between environments.
"""

import sys
from pathlib import Path

import torch
from chatterbox.models.s3gen import S3Gen
from chatterbox.tts import ChatterboxTTS

RELEASED = "checkpoints/release/vocos-s3gen-long-256x768x6-qat-int8"  # the path README's code names


def readme_blocks(readme: str, heading: str) -> list[str]:
    text = Path(readme).read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def main(readme: str, release: str, mel_path: str, out: str) -> None:
    mel = torch.load(mel_path)
    torch.manual_seed(0)
    s3gen = S3Gen().eval()
    s3gen.flow_inference = lambda *args, **kwargs: mel
    model = object.__new__(ChatterboxTTS)
    model.s3gen = s3gen
    ChatterboxTTS.from_pretrained = classmethod(lambda cls, device: model)

    def generate(self, text, **kwargs):
        tokens = torch.zeros(1, mel.shape[-1] // 2, dtype=torch.long)
        wav, _ = self.s3gen.inference(tokens, ref_wav=torch.zeros(1, 24_000))
        return wav

    ChatterboxTTS.generate = generate
    offline, streaming = readme_blocks(readme, "Use in Chatterbox")
    assert RELEASED in offline and RELEASED in streaming, "README's code names another release path"
    hift = s3gen.mel2wav
    namespace: dict = {}
    exec(offline.replace(RELEASED, release), namespace)
    assert namespace["hift"] is hift and s3gen.mel2wav is hift, "use_student did not swap in and back"
    from vocos_distill import from_pretrained

    auto_runtime = from_pretrained(release).runtime  # what runtime="auto" took (the check and timing are cached)
    played: list[torch.Tensor] = []
    namespace.update(flow_chunks=[mel[..., i : i + 13] for i in range(0, mel.shape[-1], 13)], play=played.append)
    exec(streaming.replace(RELEASED, release), namespace)
    torch_offline = generate(model, "")  # the student README's streaming code put in place, offline
    result = {
        "torch": str(torch.__version__),
        "auto_runtime": auto_runtime,
        "auto": namespace["wav"],
        "offline": torch_offline,
        "stream": torch.cat(played, -1),
    }
    torch.save(result, out)
    print(
        f"torch {torch.__version__}: README's code ran; auto chose {auto_runtime}; "
        f"streamed vs offline {(result['stream'] - torch_offline).abs().max().item():.1e}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:5])
