"""Reading kubectl's output the way an operator reads it: columns by their headers."""

from __future__ import annotations

import re

from kuberde.testing.cluster import CommandResult

__all__ = ["column", "table"]


def table(text: str) -> list[dict[str, str]]:
    """The rows of kubectl's column output, cut at the header's column starts."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    starts = [found.start() for found in re.finditer(r"\S+(?: \S+)*", header)]
    names = [
        header[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)
    ]
    rows = []
    for line in lines[1:]:
        cells = [
            line[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)
        ]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def column(result: CommandResult, name: str) -> list[str]:
    return [row[name] for row in table(result.stdout)]
