"""``docs/deployment_scale.png`` from the results of ``deployment_scale.py``
(matplotlib is imported only here, when plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(result: dict[str, Any], path: Path) -> None:
    """Every round every node finished, as a stacked bar summing to the server's round
    time: median node, slowest - median node, then the overhead's skew, last reply's
    upload and server side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = {"median node (Receiving -> Sending)": [], "slowest node - median node": [],
             "skew": [], "last reply's upload": [], "server side": []}
    labels = []
    for run in result["runs"]:
        for row in run["rounds"]:
            if "unfinished-nodes" in row:  # listed on the page, not plotted
                continue
            labels.append(f"N={run['nodes']}\nr{row['round']}")
            for name, value in zip(parts, (
                    row["median-node-s"], row["slowest-node-s"] - row["median-node-s"],
                    row["skew-s"], row["push-tail-s"], row["server-side-s"]), strict=True):
                parts[name].append(value)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(labels)), 4.5))
    x = list(range(len(labels)))
    bottom = [0.0] * len(labels)
    colors = ("#8fb3d9", "#3c6e9f", "#f2c48d", "#e08a3c", "#a8471c")
    for (name, values), color in zip(parts.items(), colors, strict=True):
        ax.bar(x, values, bottom=bottom, label=name, color=color)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("seconds (bar = server's round time)")
    ax.set_title("Per round: the nodes' time, then the overhead beyond the slowest node",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
