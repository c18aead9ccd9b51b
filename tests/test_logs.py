"""One voice on the console: library handlers removed, warnings as one line."""

import logging
import warnings

import pytest

from train.evaluation.metrics import MetricWarning
from train.utils.logs import format_warning, route_library_logs


@pytest.fixture(autouse=True)
def restore_warnings(monkeypatch):
    """route_library_logs changes process-wide settings: put them back after each test."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    with warnings.catch_warnings():
        yield
    logging.captureWarnings(False)


def test_library_records_go_through_the_root_logger_once(monkeypatch):
    root = logging.getLogger()
    handler = logging.StreamHandler()
    monkeypatch.setattr(root, "handlers", [handler])
    library = logging.getLogger("huggingface_hub")
    monkeypatch.setattr(library, "handlers", [logging.StreamHandler()])
    monkeypatch.setattr(library, "propagate", False)
    route_library_logs()
    assert library.handlers == [] and library.propagate
    records = []
    monkeypatch.setattr(handler, "emit", records.append)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: install something")
    library.warning("Retrying in 1s")
    assert [r.getMessage() for r in records] == ["Retrying in 1s"]


def test_warnings_are_one_line_without_the_source_line():
    assert format_warning("clip.wav: pesq_wb failed", MetricWarning, "/x/metrics.py", 9) == (
        "MetricWarning: clip.wav: pesq_wb failed"
    )
    assert format_warning("old", DeprecationWarning, "/lib/thing.py", 3) == "DeprecationWarning: old (thing.py:3)"
    route_library_logs()
    assert warnings.formatwarning is format_warning


# -- progress in a log: lines every few seconds, not a redraw per item -------------------------------------
def test_progress_in_a_log_is_a_few_whole_lines_and_on_a_terminal_a_live_bar():
    import io

    from train.utils.progress import progress

    log = io.StringIO()  # a file, a SLURM log, CI's output: not a terminal
    for _ in progress(iterable=range(5000), desc="prepare", file=log):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 1 <= len(lines) <= 3  # the start and the end, not 5,000 redraws
    assert lines[-1].startswith("prepare: 100%") and "5000/5000" in lines[-1]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    bar = progress(total=3, desc="train", file=screen)
    for _ in range(3):
        bar.update(1)
        bar.refresh()
    bar.close()
    assert screen.getvalue().count("\r") >= 3  # redrawn in place
