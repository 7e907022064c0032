"""Regenerate the config reference page from the schema: `python scripts/gen_config_reference.py`.

The table sits between the BEGIN/END markers in docs/config.md (README links to it);
tests/test_config.py fails when it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.config import REPO_ROOT, config_reference  # noqa: E402

BEGIN, END = "<!-- BEGIN CONFIG REFERENCE -->", "<!-- END CONFIG REFERENCE -->"
PAGE = REPO_ROOT / "docs" / "config.md"


def render(page: str) -> str:
    """`page` with the block between the markers replaced by the reference generated from the schema."""
    if page.count(BEGIN) != 1 or page.count(END) != 1:
        raise ValueError(f"expected one {BEGIN} ... {END} block")
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{config_reference()}\n{END}{tail}"


if __name__ == "__main__":
    PAGE.write_text(render(PAGE.read_text()))
    print(f"updated {PAGE.relative_to(REPO_ROOT)}")
