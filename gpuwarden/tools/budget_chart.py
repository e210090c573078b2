"""``gpuwarden budget --chart``: the memory budget as a stacked bar per GPU.

One horizontal bar per GPU, its four parts (KV cache, server other, other processes,
free) left to right, each labelled in GiB, and a mark at the headroom target: where the
free part should begin (total x (1 - 15 %)). A bar whose free part starts left of its
mark keeps enough headroom.

matplotlib (the ``chart`` extra) is imported inside :func:`write_chart` only: no other
command pays for it. The figure is drawn with the Agg canvas (PNG) or matplotlib's SVG
writer, without pyplot, so no display nor global figure state is involved; SVG text is
kept as text (``svg.fonttype = none``), so the labels stay searchable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FORMATS = ("png", "svg")
PARTS = (("kv_cache", "KV cache", "#4c72b0"), ("server_other", "server other", "#dd8452"),
         ("other_processes", "other processes", "#8c8c8c"), ("free", "free", "#55a868"))
GIB = float(1 << 30)
#: Segments narrower than this share of the widest bar get no label (it would not fit).
MIN_LABELLED = 0.04


def chart_format(path: str | Path) -> str:
    """``png`` or ``svg`` from the file name; ValueError naming the choices otherwise."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"--chart: {str(path)!r} must end in .png or .svg "
                         f"(got {('.' + suffix) if suffix else 'no extension'})")
    return suffix


def bar_name(gpu: Mapping[str, Any], several_nodes: bool) -> str:
    """How the chart names a GPU's bar (the node too when the budget spans several)."""
    name = f"GPU {gpu.get('gpu')}"
    return f"{gpu.get('node')} {name}" if several_nodes else name


def write_chart(doc: Mapping[str, Any], path: str | Path) -> None:
    """Draw the budget's GPUs (``Budget.to_json`` shape) into ``path`` (.png or .svg).

    Raises ValueError for another extension, ImportError without matplotlib, OSError
    when the file cannot be written.
    """
    fmt = chart_format(path)
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gpus: Sequence[Mapping[str, Any]] = doc.get("gpus") or []
    target = float(doc.get("headroom_target_ratio", 0.15))
    several = len({g.get("node") for g in gpus}) > 1
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "gpuwarden"}):
        fig = Figure(figsize=(10, 1.6 + 0.7 * max(1, len(gpus))), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        names = [bar_name(g, several) for g in gpus]
        rows = list(range(len(gpus)))[::-1]  # the first GPU on top
        widest = max((g.get("total_gib") or 0.0 for g in gpus), default=0.0) or 1.0
        left = [0.0] * len(gpus)
        for part, label, colour in PARTS:
            widths = [((g.get("parts") or {}).get(part) or {}).get("gib") or 0.0 for g in gpus]
            bars = ax.barh(rows, widths, left=left, color=colour, label=label, height=0.6)
            for gpu, patch, width in zip(gpus, bars.patches, widths, strict=True):
                patch.set_gid(f"bar-{gpu.get('node')}-{gpu.get('gpu')}-{part}")
                if width / widest >= MIN_LABELLED:
                    x = patch.get_x() + width / 2
                    y = patch.get_y() + patch.get_height() / 2
                    ax.text(x, y, f"{width:.1f} GiB", ha="center", va="center", fontsize=8,
                            color="white" if part != "free" else "black")
            left = [a + b for a, b in zip(left, widths, strict=True)]
        for y, gpu in zip(rows, gpus, strict=True):
            total = gpu.get("total_gib")
            split = any(p.get("gib") is not None for p in (gpu.get("parts") or {}).values())
            if total and split:
                ax.vlines(total * (1 - target), y - 0.4, y + 0.4, colors="#c44e52",
                          linestyles="dashed", linewidth=1.5,
                          label=f"{target * 100:.0f} % headroom target" if y == rows[0]
                          else "_nolegend_")
            else:
                ax.text(0, y, " memory split n/a", va="center", fontsize=8)
        ax.set_yticks(rows, names)
        ax.set_xlabel("GiB")
        ax.set_xlim(0, widest * 1.02)
        node = doc.get("node")
        ax.set_title(f"GPU memory budget{f' of node {node}' if node else ''}")
        if gpus:
            fig.legend(loc="outside lower center", ncols=5, frameon=False, fontsize=8)
        fig.savefig(path, format=fmt)
