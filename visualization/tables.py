"""Markdown tables: the one writer that ``report.py`` and the faithfulness summary share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["markdown_table"]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """``| a | b |`` lines: the header, its rule, then one line per row; no trailing newline.

    Args:
        header: Column titles.
        rows: Cells per row, as many as ``header``, each written with ``str``.

    Raises:
        ValueError: A row has another number of cells than the header.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [str(cell) for cell in row]
        if len(cells) != len(header):
            raise ValueError(f"A row has {len(cells)} cells for {len(header)} columns: {cells}.")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
