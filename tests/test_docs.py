"""README and docs/: README stays a user's page, and every link between the pages resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import REPO

import vocos_distill

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces to
    hyphens; a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^#{1,6} (.+?)\s*#*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        assert destination.exists(), f"{page.relative_to(REPO)}: {target}: no such file"
        if anchor:
            assert destination.suffix == ".md", f"{page.relative_to(REPO)}: {target}: an anchor into a non-page"
            assert anchor in anchors(destination), f"{page.relative_to(REPO)}: {target}: no such heading"


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [missing](#nowhere) [gone](other.md)\n")
    assert links(page) == ["#title", "#nowhere", "other.md"]
    assert "title" in anchors(page) and "nowhere" not in anchors(page)
    assert not (tmp_path / "other.md").exists()


def test_every_docs_page_is_reachable_from_readme():
    """A page nobody links to is lost: each docs page is linked from README or another page."""
    linked = {
        (page.parent / t.partition("#")[0]).resolve() for page in PAGES for t in links(page) if t.partition("#")[0]
    }
    for page in PAGES[1:]:
        assert page.resolve() in linked or page.parent.resolve() in linked, (
            f"{page.relative_to(REPO)} is linked from nowhere"
        )


def test_readme_is_short_and_its_first_screen_installs_uses_and_tests():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first_screen = "\n".join(text.splitlines()[:30])
    assert vocos_distill.INSTALL in first_screen, "the runtime's install line, as the model card writes it"
    assert 'pip install -e ".[train,dev]"' in first_screen
    assert "python train/fit.py experiment=distill" in first_screen and "python -m pytest" in first_screen


def test_ci_installs_and_tests_exactly_as_readme_says():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    training = next(line for line in readme.splitlines() if line.startswith('pip install -e ".[train,dev]"'))
    assert f"python -m {training}" in ci or training in ci
    assert "python -m pytest" in ci
    pins = (REPO / ".ci" / "chatterbox-pins").read_text()
    assert "README.md" in pins and "INSTALL" in pins  # it runs README's runtime line as written


def test_every_figure_in_readme_names_its_machine():
    """The headline table has a machine for every row."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Headline figures\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]
    header, *body = rows
    column = [cell.strip() for cell in header.strip("|").split("|")].index("measured on")
    assert body
    for row in body:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[column], row


def test_every_command_runs_a_script_one_way():
    """Every script is run as ``python train/<name>.py`` (no ``python -m train.<name>``), and each
    one README and docs name exists."""
    scripts = {p.stem for p in (REPO / "train").glob("*.py") if p.stem != "__init__"}
    named = set()
    for page in PAGES:
        text = page.read_text()
        assert "python -m train." not in text, page
        named |= set(re.findall(r"python train/([a-z_]+)\.py", text))
    assert {"fit", "bench", "curve", "listen"} <= named and named <= scripts, named - scripts
