"""Build the offline speech corpus: ``python train/corpus.py [--out data/speech] [--sources ...]``.

Downloads the source packages (``apt-get download``; Debian's registry), converts their
recordings to 24 kHz FLAC with a licence manifest, and holds out whole speakers. See
:mod:`train.data.speech`.
"""

from __future__ import annotations

import rootutils

# train/ is not installed: the checkout this script lives in (its .project-root) goes first on the import path
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True, project_root_env_var=False, dotenv=False)

import argparse
import logging
import sys
from pathlib import Path

from train.data.speech import HELDOUT_SPEAKERS, MANIFEST, SOURCES, SPLITS, build
from vocos_distill.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/speech"), help="corpus folder (replaced when complete)")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), help=f"from {', '.join(SOURCES)}")
    parser.add_argument(
        "--heldout", nargs="*", default=list(HELDOUT_SPEAKERS), help="speaker groups held out (language codes)"
    )
    parser.add_argument("--debs", type=Path, help="folder with the packages' .deb files already downloaded")
    parser.add_argument("--download-dir", type=Path, help="keep downloaded .deb files here (default: a temporary)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = build(args.out, args.sources, args.heldout, debs=args.debs, download_dir=args.download_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    speakers = {split: sorted({c.speaker for c in report.clips if c.split == split}) for split in SPLITS}
    sources = sorted({c.source for c in report.clips if c.split == "heldout_source"})
    print(
        f"{args.out}: {len(report.clips)} clips, {report.minutes('train'):.1f} min train "
        f"({len(speakers['train'])} speaker groups), {report.minutes('heldout'):.1f} min held out by speaker "
        f"({', '.join(speakers['heldout'])}), {report.minutes('heldout_source'):.1f} min held out by source "
        f"({', '.join(sources) or 'none'}); every file is listed in {args.out / MANIFEST}"
    )
    for why, n in sorted(report.skipped.items()):
        print(f"  skipped {n}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
