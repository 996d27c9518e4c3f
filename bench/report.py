"""What every benchmark hands back: a printed table, a JSON result and a PNG plot.

One shape for all of them, so the README can quote any result the same way: the exact
command, the machine it ran on, the rows of the table, then whatever raw repeats the
benchmark wants to keep.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """The hardware and software a figure was measured on (figures from two machines are
    never compared)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine_line(m: dict[str, Any]) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    return f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads){gpu}"


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed value, never an interpolation."""
    if not xs:
        return float("nan")
    ordered = sorted(xs)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table: printed as is, pasted into the README as is."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write(
    name: str,
    command: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    extra: dict[str, Any],
    out_dir: Path = RESULTS,
) -> Path:
    """Print the table and write `<out_dir>/<name>.json` (written whole, then renamed)."""
    m = machine()
    text = table(headers, rows)
    print(text)
    print(f"machine: {machine_line(m)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    data = {"command": command, "machine": m, "headers": list(headers), "rows": rows, **extra}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)
    print(f"wrote {path}")
    return path


def bar_plot(
    path: Path,
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    ylabel: str,
    target: float | None = None,
    target_label: str = "target",
) -> Path:
    """Grouped bars (one group per label, one bar per series), optionally a target line.

    matplotlib is a benchmark extra (`pip install -e '.[bench]'`, or `make bench-env`), not a
    dependency of the app, hence the late import.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "the benchmarks' plots need matplotlib: run `make bench-env` "
            "(or pip install -e '.[bench]')"
        ) from e
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(labels) * max(1, len(series))), 3.6))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    if target is not None:
        ax.axhline(target, color="black", linestyle="--", linewidth=1, label=target_label)
    ax.set_xticks(range(len(labels)), [textwrap.fill(x, 16) for x in labels], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1 or target is not None:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path
