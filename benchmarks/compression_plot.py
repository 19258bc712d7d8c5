"""``docs/compression_accuracy_vs_bytes.png``: final accuracy against total uplink bytes,
one panel per model, from the results of ``compression.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compression_presets import MODELS, NUM_NODES, SEED

COLORS = {"off": "black", "fp16": "tab:gray", "qsgd8": "tab:blue", "topk10": "tab:green",
          "topk1": "tab:orange", "topk0.1": "tab:red"}


def _points(ax: Any, runs: list[dict[str, Any]]) -> None:
    """One marker per run (filled: error feedback on) and the top-k curves."""
    for r in runs:
        family = r["codec"].split("-")[0]
        ef = r["codec"].endswith("-ef")
        ax.scatter(r["bytes-up"], 100 * r["final-accuracy"], s=60,
                   marker="s" if family in ("off", "fp16") else "o",
                   facecolors=COLORS[family] if ef or family in ("off", "fp16") else "none",
                   edgecolors=COLORS[family], linewidths=1.6, zorder=3)
        below = family not in ("off", "fp16") and not ef  # EF-off twins sit on EF-on
        ax.annotate(r["codec"], (r["bytes-up"], 100 * r["final-accuracy"]), fontsize=7,
                    xytext=(5, -11 if below else 4), textcoords="offset points")
    for ef, style in ((True, "-"), (False, "--")):
        pts = sorted((r["bytes-up"], 100 * r["final-accuracy"]) for r in runs
                     if r["codec"].startswith("topk") and r["codec"].endswith("-ef") == ef)
        if pts:
            ax.plot(*zip(*pts, strict=True), style, color="tab:purple", alpha=0.5,
                    label=f"top-k 8-bit, EF {'on' if ef else 'off'}")


def _references(ax: Any, runs: list[dict[str, Any]], wire: dict[str, Any]) -> None:
    """The targets ('off' - 0.5 pt, 'off' / 100 bytes) and the per-reply byte floor."""
    off = next((r for r in runs if r["codec"] == "off"), None)
    if off is None:
        return
    ax.axhline(100 * off["final-accuracy"] - 0.5, color="gray", ls=":", lw=1,
               label="'off' - 0.5 pt")
    ax.axvline(off["bytes-up"] / 100, color="gray", ls="-.", lw=1, label="'off' / 100 bytes")
    fixed = [v["array-bytes"] - v["payload-bytes"] for k, v in wire.items() if k != "off"]
    if fixed:
        ax.axvline(off["accepted-replies"] * min(fixed), color="tab:brown", ls="--",
                   lw=1, label="floor: .npy header + key per reply")


def plot(results: dict[str, Any], path: Path) -> None:
    """Write the figure to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [k for k in MODELS if any(r["model"] == k for r in results["runs"])]
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, key in zip(axes[0], models, strict=True):
        runs = [r for r in results["runs"] if r["model"] == key]
        _points(ax, runs)
        _references(ax, runs, results["wire"].get(key, {}))
        m = results["models"][key]
        ax.set(xscale="log", xlabel="total uplink bytes (all nodes, all rounds)",
               ylabel="final server accuracy (%)",
               title=f"{MODELS[key]['label']} ({m['parameters']:,} params)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", title="filled = EF on, hollow = EF off",
                  title_fontsize=7)
    fig.suptitle(f"digits, {NUM_NODES} nodes, {results['rounds']} rounds, seed {SEED}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
