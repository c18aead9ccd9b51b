"""Listening tests: ``python train/listen.py make|serve|aggregate ...``.

``make OUT RELEASE [RELEASE ...]`` turns releases' ``listen/`` clips into an experiment folder
(:mod:`train.listening.experiment`: hidden reference, HiFT, each release's student, the
Griffin-Lim floor and the 3.5 kHz anchor, loudness-matched; a headphone check, MUSHRA, A/B, ACR
and same/different-speaker pages). ``serve EXPERIMENT`` serves them on 127.0.0.1
(:mod:`train.listening.serve`; another ``--host`` needs a password); each submitted page is
stored at once. ``aggregate`` reads the listeners' answers under ``EXPERIMENT/answers/`` (one
file per submitted page; see :mod:`train.listening.answers`), screens listeners (BS.1534's
post-screening, the headphone check, conditions rated unplayed), and writes
``EXPERIMENT/listening.json``, ``listening.png`` (a box plot per condition) and, with ``--csv``,
every answer as CSV. With ``--report``, the evaluation report of one of the experiment's students
gains the same ``listening`` section, its verdict counts that student's listening gates, and
its ``summary.md`` beside it is rewritten; the model card of a release made from that report quotes it.
"""

from __future__ import annotations

import rootutils

# train/ is not installed: the checkout this script lives in (its .project-root) goes first on the import path
rootutils.setup_root(__file__, indicator=".project-root", pythonpath=True, project_root_env_var=False, dotenv=False)

import argparse
import json
import sys
from pathlib import Path

from train.evaluation.report import read_report, to_markdown, verdict, write_report
from train.listening.aggregate import aggregate, answers_csv, box_plot, student_of_report
from train.listening.answers import BLOCKS
from train.listening.experiment import make_experiment
from train.listening.serve import read_password
from train.listening.serve import serve as serve_pages
from vocos_distill.errors import ConfigError
from vocos_distill.files import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="an experiment folder from releases' listen/ clips")
    make.add_argument("out", type=Path, help="the experiment folder to write (must not exist)")
    make.add_argument("releases", type=Path, nargs="+", help="release folders; the first gives reference and HiFT")
    make.add_argument("--utterances", type=int, default=8, help="utterances drawn (seeded)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--blocks", default=",".join(BLOCKS), help=f"which blocks, comma-separated ({','.join(BLOCKS)})")
    serve = commands.add_parser("serve", help="serve the experiment's pages on this machine")
    serve.add_argument("experiment", type=Path)
    serve.add_argument("--host", default="127.0.0.1",
                       help="the address to listen on; another than loopback needs a password")  # fmt: skip
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--password-file", type=Path,
                       help="a file holding the password listeners give (default: $LISTENING_PASSWORD)")  # fmt: skip
    run = commands.add_parser("aggregate", help="aggregate the answers into listening.json (and a report)")
    run.add_argument("experiment", type=Path, help="the experiment folder (experiment.json, answers/)")
    run.add_argument("--report", type=Path, help="the report.json of one of the experiment's students")
    run.add_argument("--csv", type=Path, help="also write every answer to this CSV file")
    run.add_argument("--keep-unplayed", action="store_true",
                     help="keep listeners who rated a MUSHRA condition unplayed (excluded by default)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "make":
        try:
            blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
            folder = make_experiment(args.out, args.releases, args.utterances, args.seed, blocks)
        except (ConfigError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        experiment = json.loads((folder / "experiment.json").read_text())
        pages = sum(len(v) for v in experiment["blocks"].values())
        print(f"{folder}: {len(experiment['trials'])} utterances, conditions {', '.join(experiment['conditions'])}; "
              f"{pages} pages")  # fmt: skip
        return 0
    if args.command == "serve":
        try:
            serve_pages(args.experiment, args.host, args.port, read_password(args.password_file))
        except (ConfigError, ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        section = aggregate(args.experiment, require_plays=not args.keep_unplayed)
        report = None
        if args.report is not None:
            report = read_report(args.report)
            section = {**section, "student": student_of_report(section, report, args.report)}
        if section["trials"]["mushra"]:
            box_plot(args.experiment, section, args.experiment / "listening.png")
        atomic_write_text(args.experiment / "listening.json", json.dumps(section, indent=1))
        if args.csv is not None:
            atomic_write_text(args.csv, answers_csv(args.experiment))
        if report is not None:
            report["listening"] = section
            own = section["student_gates"].get(section["student"], {})
            counted = [*report["gates"], *({"status": "fail" if s == "insufficient" else s} for s in own.values())]
            report["verdict"] = verdict(counted)
            write_report(report, args.report)
            atomic_write_text(args.report.parent / "summary.md", to_markdown(report))
    except (ConfigError, ValueError) as err:  # a bad experiment, answer file or report: named, nothing changed
        print(f"error: {err}", file=sys.stderr)
        return 2
    kept = len(section["listeners"]) - len(section["excluded"])
    print(f"{args.experiment / 'listening.json'}: {kept} of {len(section['listeners'])} listeners kept")
    print("  screening: " + "; ".join(section["screening"]))
    for excluded in section["excluded"]:
        print(f"  excluded {excluded['listener']}: {excluded['why']}")
    for gate in section["gates"]:
        print(
            f"  gate {gate['name']} (from listener data): {gate['status']}"
            + (f" ({gate['reason']})" if gate["reason"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
