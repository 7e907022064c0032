"""Write a generated block into its page between the page's BEGIN/END markers. The benchmarks own those
blocks; their numbers are never typed by hand.

The blocks used to live in README.md; README is now a user's page that links to docs/, and each block
lives on the page that BLOCKS names (the config reference, docs/config.md, is written by
scripts/gen_config_reference.py). A writer passes its markers and the block finds its page, so a writer
need not know where its block lives.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
RESULTS = DOCS / "results.md"
BENCHMARKS = DOCS / "benchmarks.md"

# block name (the text between "<!-- BEGIN " and " -->") -> the page that holds it; the writer in brackets
BLOCKS = {
    "MAIN JOB RESULTS": RESULTS,  # benchmarks/main_job.py --write-docs
    "COMPARE RESULTS": RESULTS,  # benchmarks/compare.py --write-docs
    "COMPARE LONG RESULTS": RESULTS,  # benchmarks/compare.py --write-docs --docs-block long
    "DATA PLANE": BENCHMARKS,  # benchmarks/data_plane.py --table BEFORE AFTER --readme
    "WEIGHT SYNC": BENCHMARKS,  # benchmarks/weight_sync.py prints it; pasted from that output
    "COLOCATION": BENCHMARKS,  # benchmarks/colocation.py prints it; pasted from that output
    "CHAOS": BENCHMARKS,  # benchmarks/chaos.py --write-docs
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def page_of(begin: str) -> Path:
    """The page that holds the block whose BEGIN marker is `begin`."""
    name = begin.removeprefix("<!-- BEGIN ").removesuffix(" -->")
    if name not in BLOCKS:
        raise SystemExit(f"no page holds the block {begin!r} (benchmarks/readme_section.py BLOCKS)")
    return BLOCKS[name]


def replace_between(begin: str, end: str, body: str, page: Path | None = None) -> Path:
    """Replace the block between `begin` and `end` on `page` (default: the block's page); return the page."""
    page = page_of(begin) if page is None else page
    text = page.read_text()
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"{page} has no single {begin} ... {end} block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{begin}\n{body.rstrip()}\n{end}{tail}")
    return page
