"""Text report of :meth:`fixedq.engine.Model.profile` (per-op wall time).

Example:
    >>> rows = [{"name": "conv", "kind": "neural", "type": "conv2d", "seconds": 0.03,
    ...          "share": 0.75},
    ...         {"name": "add", "kind": "add", "type": "", "seconds": 0.01, "share": 0.25}]
    >>> print(format_profile(rows))
    op    kind             ms  share
    --------------------------------
    conv  neural/conv2d  30.0  75.0%
    add   add            10.0  25.0%
    --------------------------------
    total                 40.0
    by kind: neural/conv2d 75.0%, add 25.0%
"""

from __future__ import annotations


def format_profile(rows: list[dict]) -> str:
    """A table of per-op milliseconds and shares, then the shares summed per kind."""
    table = [("op", "kind", "ms", "share")]
    per_kind: dict[str, float] = {}
    for r in rows:
        kind = r["kind"] + (f"/{r['type']}" if r.get("type") else "")
        per_kind[kind] = per_kind.get(kind, 0.0) + r["share"]
        table.append((r["name"], kind, f"{r['seconds'] * 1e3:.1f}", f"{r['share'] * 100:.1f}%"))
    widths = [max(len(t[i]) for t in table) for i in range(4)]
    line = "-" * (sum(widths) + 6)

    def fmt(t):
        return "  ".join((c.rjust(w) if i >= 2 else c.ljust(w))
                         for i, (c, w) in enumerate(zip(t, widths, strict=True))).rstrip()

    total = sum(r["seconds"] for r in rows) * 1e3
    out = [fmt(table[0]), line] + [fmt(t) for t in table[1:]] + [
        line, fmt(("total", "", f"{total:.1f}", "")),
        "by kind: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in
                                sorted(per_kind.items(), key=lambda kv: -kv[1]))]
    return "\n".join(out)
