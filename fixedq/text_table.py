"""Fixed-width text tables for the terminal reports (``check``, ``inspect``, program checks).

Example:
    >>> print("\\n".join(text_table([("op", "ms"), ("conv", "1.5"), ("dense", "12.0")], left=1)))
    op       ms
    -----  ----
    conv    1.5
    dense  12.0
"""

from __future__ import annotations

__all__ = ["text_table"]


def text_table(rows: list[tuple[str, ...]], left: int) -> list[str]:
    """Lines of ``rows`` (the first is the header) in columns two spaces apart, the first
    ``left`` columns left-aligned and the others right-aligned, a dashed line under the header,
    trailing spaces stripped."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
