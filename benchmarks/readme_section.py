"""Write a generated block into README.md between its BEGIN/END markers (benchmarks own those blocks;
their numbers are never typed by hand)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def replace_between(begin: str, end: str, body: str, readme: Path = README) -> None:
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{readme} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{body.rstrip()}\n{end}{tail}")
