"""README is a user's page: its two quick-start commands, its length, its links into docs/; every generated
block lives on its docs/ page (benchmarks/readme_section.py, scripts/gen_config_reference.py), none in README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cluster.config import DEFAULT_PRESET, REPO_ROOT
from tests.script_loader import load_script

pytestmark = pytest.mark.unit

README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
QUICK_START = [
    "bash scripts/setup.sh && .venv/bin/python launch.py",  # train the default preset
    "bash scripts/setup.sh && .venv/bin/python -m pytest",  # run the tests
]


def section(text: str, heading: str) -> str:
    """The body of the `## heading...` section (up to the next `## `)."""
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    ids, counts = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", without_code(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        ids.add(f"{slug}-{n}" if n else slug)
    return ids


def test_readme_quick_start_is_exactly_the_two_commands():
    quick = section(README.read_text(), "Quick start")
    assert [b.strip() for b in re.findall(r"```bash\n(.*?)```", quick, flags=re.S)] == QUICK_START
    # what the first command trains is what README says it trains
    assert (REPO_ROOT / "scripts" / "setup.sh").is_file() and (REPO_ROOT / "launch.py").is_file()
    assert f"configs/{DEFAULT_PRESET.name}" in quick


def test_readme_is_a_short_users_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    assert "<!-- BEGIN" not in text and "<!-- END" not in text  # generated blocks live in docs/
    for heading in ("Quick start", "Results", "Layout", "Running", "Security", "Tests"):
        section(text, heading)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_and_images_resolve(page: Path):
    for target in re.findall(r"\]\(([^)\s]+)\)", without_code(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_file(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text()), f"{page.name}: {target}: no such heading"


def test_every_generated_block_is_once_on_its_page():
    blocks = load_script("benchmarks/readme_section.py")
    gen = load_script("scripts/gen_config_reference.py")
    placed = {blocks.markers(name): page for name, page in blocks.BLOCKS.items()}
    assert all(blocks.page_of(begin) == page for (begin, _), page in placed.items())
    placed[gen.BEGIN, gen.END] = gen.PAGE  # the config reference has its own writer
    for (begin, end), page in placed.items():
        assert page.parent == REPO_ROOT / "docs", begin
        text = page.read_text()
        assert text.count(begin) == text.count(end) == 1 and text.index(begin) < text.index(end), (page, begin)
        for other in PAGES:
            assert other == page or begin not in other.read_text(), (other, begin)


def test_a_block_is_written_between_its_markers_and_nowhere_else(tmp_path):
    blocks = load_script("benchmarks/readme_section.py")
    begin, end = blocks.markers("DATA PLANE")
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# B\n\nbefore\n{begin}\n| old |\n{end}\nafter\n")
    assert blocks.replace_between(begin, end, "| new |\n\n", page) == page
    assert page.read_text() == f"# B\n\nbefore\n{begin}\n| new |\n{end}\nafter\n"
    page.write_text("# B\n\nno block\n")
    with pytest.raises(SystemExit, match="no single"):
        blocks.replace_between(begin, end, "| new |", page)
    with pytest.raises(SystemExit, match="no page holds"):
        blocks.page_of("<!-- BEGIN NOTHING -->")


def test_config_keys_named_in_readme_exist():
    reference = (REPO_ROOT / "docs" / "config.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", reference, flags=re.M))
    sections = {key.split(".")[0] for key in documented if "." in key}
    named = re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)(?:=[^`]*)?`", README.read_text())
    for key in (k for k in named if k.split(".")[0] in sections):
        key = re.split(r"\.\d+(?:\.|$)", key)[0]  # rewards.scorers.0.options.reward: the list's own key
        per_algorithm = key.startswith("algorithm.") and any(
            d.startswith("algorithm.") and d.endswith("." + key.removeprefix("algorithm.")) for d in documented)
        assert key in documented or per_algorithm, f"README names {key}, which docs/config.md does not list"
