"""Markdown tables and figures as the reports, model cards, benchmarks and listening tests print them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def format_stat(stat: Mapping[str, Any] | None, spec: str = ".3f", count: bool = False, missing: str = "–") -> str:
    """A summary statistic as ``mean [low, high]`` (and ``(n=...)`` with ``count``)."""
    if stat is None or stat.get("mean") is None:
        return missing
    low, high = stat.get("ci95") or (None, None)
    interval = f" [{low:{spec}}, {high:{spec}}]" if low is not None and high is not None else ""
    return f"{stat['mean']:{spec}}{interval}" + (f" (n={stat.get('n')})" if count else "")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rows_table(rows: list[Mapping[str, Any]], number: str = "{:.3f}") -> str:
    """A Markdown table of dict rows with the same keys; floats formatted with ``number``."""
    cells = [[number.format(v) if isinstance(v, float) else str(v) for v in row.values()] for row in rows]
    return table(list(rows[0]), cells)
