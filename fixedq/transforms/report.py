"""What :func:`fixedq.transforms.sanitize` changed, as a readable, comparable record.

Example:
    >>> report = SanitizeReport([Change("fold_batchnorm", ("conv", "bn"), "folded bn into conv")])
    >>> len(report)
    1
    >>> print(report)
    sanitize: 1 change
      [fold_batchnorm] conv, bn: folded bn into conv
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

__all__ = ["Change", "SanitizeReport"]


@dataclasses.dataclass(frozen=True)
class Change:
    """One rewrite applied once: its name, the layers involved and a one-line description."""

    rewrite: str
    layers: tuple[str, ...]
    detail: str = ""

    def __str__(self) -> str:
        text = f"[{self.rewrite}] {', '.join(self.layers)}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclasses.dataclass(frozen=True)
class SanitizeReport:
    """Ordered list of :class:`Change` (empty when the model needed no rewrite)."""

    changes: list[Change] = dataclasses.field(default_factory=list)

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    def __getitem__(self, index: int) -> Change:
        return self.changes[index]

    def by_rewrite(self, rewrite: str) -> list[Change]:
        """The changes made by the rewrite called ``rewrite``."""
        return [c for c in self.changes if c.rewrite == rewrite]

    def __str__(self) -> str:
        if not self.changes:
            return "sanitize: no changes"
        plural = "" if len(self.changes) == 1 else "s"
        lines = [f"sanitize: {len(self.changes)} change{plural}"]
        lines += [f"  {change}" for change in self.changes]
        return "\n".join(lines)
