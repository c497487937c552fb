"""PNG plots of analysis reports (matplotlib, imported only when a plot is asked for).

Example:
    >>> from fixedq.analysis.plots import plot_inspection
    >>> plot_inspection(report, "errors.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path

from fixedq.io import atomic_path

__all__ = ["plot_inspection"]



def _matplotlib():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install matplotlib (or the 'examples' "
                          "extra of fixedq)") from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _snr(err, cap: float) -> float:
    """SNR for a bar; an exact tensor (infinite SNR) is drawn at ``cap`` and labelled."""
    if err is None:
        return math.nan
    return cap if math.isinf(err.snr_db) and err.snr_db > 0 else max(err.snr_db, 0.0)


def plot_inspection(report, path) -> None:
    """Bar chart of weight and activation SNR (dB) by layer, saturation on a second axis.

    ``path`` must end with ``.png``; the file is written atomically.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path must end with .png, got {str(path)!r}")
    plt = _matplotlib()
    names = [r.name for r in report.layers]
    x = list(range(len(names)))
    finite = [e.snr_db for r in report.layers for e in (r.weights, r.activation)
              if e is not None and math.isfinite(e.snr_db)]
    cap = (max(finite) if finite else 50.0) + 10.0
    w = [_snr(r.weights, cap) for r in report.layers]
    a = [_snr(r.activation, cap) for r in report.layers]
    sat = [100 * r.saturation_rate if r.saturation_rate is not None else math.nan
           for r in report.layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4.5))
    ax.bar([i - 0.2 for i in x], w, width=0.4, label="weights SNR (dB)", color="#4c72b0")
    ax.bar([i + 0.2 for i in x], a, width=0.4, label="activation SNR (dB)", color="#dd8452")
    for i, (wi, ai) in enumerate(zip(w, a, strict=True)):
        for offset, value in ((-0.2, wi), (0.2, ai)):
            if value == cap:
                ax.text(i + offset, cap, "exact", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, cap * 1.15)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("SNR (dB, higher is better)")
    ax.set_title(f"{report.model}: quantization error by layer ({report.num_samples} samples)")
    ax2 = ax.twinx()
    ax2.plot(x, sat, "k.", label="saturated outputs (%)")
    ax2.set_ylabel("saturated outputs (%)")
    ax2.set_ylim(bottom=0, top=max([s for s in sat if not math.isnan(s)] + [1.0]) * 1.2)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8, loc="upper right",
              framealpha=0.9)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:  # removed on errors and signals
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
