"""What the benchmark scripts share: machine facts, side-by-side timing, output files.

Scripts run as ``python benchmarks/NAME.py``, so ``benchmarks/`` is on ``sys.path`` and they
import this module as ``common``. Nothing here imports fedapp, torch or Flower at import
time: a script's ``--help`` stays quick.

* facts for the results JSON: :func:`loadavg`, :func:`machine`, :func:`versions`,
  :func:`command_line`;
* timing: :func:`timed` (one call), :func:`interleave` (every case once per repeat, so
  load from elsewhere drifts over all alike);
* outputs: :func:`output_paths` (the repo's paths for the full benchmark, else a
  temporary directory), :func:`write_json`, :func:`shown`, :func:`md_table`;
* formatting: :func:`fmt_opt`, :func:`fmt_bytes`, :func:`mean_or_none`.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs"

T = TypeVar("T")


# ---------------------------------------------------------------- facts for the JSON


def loadavg(ndigits: int | None = 2) -> list[float]:
    """The 1, 5 and 15 min load averages, rounded to ``ndigits`` (None: as the OS gives)."""
    return [v if ndigits is None else round(v, ndigits) for v in os.getloadavg()]


def machine() -> dict[str, Any]:
    """Python version, platform string and CPU count."""
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}


def git(*args: str) -> str:
    """``git ARGS`` in the repository; its stdout, stripped ("" if git fails)."""
    try:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False)
    except OSError:
        return ""
    return proc.stdout.strip()


def versions(*packages: str) -> dict[str, Any]:
    """:func:`machine` plus each package's ``__version__``, the checkout's commit and
    its modified tracked files (``git-dirty``)."""
    facts = machine()
    return {"python": facts["python"],
            **{name: importlib.import_module(name).__version__ for name in packages},
            "platform": facts["platform"], "cpus": facts["cpus"],
            "git-commit": git("rev-parse", "HEAD"),
            "git-dirty": git("status", "--porcelain", "--untracked-files=no").splitlines()}


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """How the benchmark was started: ``python benchmarks/SCRIPT ARGS``."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", f"benchmarks/{script}", *args])


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """``fn()``'s wall time (``time.perf_counter``, seconds) and its result."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def interleave(cases: Mapping[str, Callable[[], T]], repeats: int,
               after_repeat: Callable[[int, dict[str, T]], None] | None = None,
               ) -> dict[str, list[T]]:
    """Call every case once per repeat, in order; each case's results, in repeat order.

    ``after_repeat(r, results_of_repeat_r)`` runs after each repeat (progress lines)."""
    samples: dict[str, list[T]] = {name: [] for name in cases}
    for r in range(repeats):
        this = {name: fn() for name, fn in cases.items()}
        for name, value in this.items():
            samples[name].append(value)
        if after_repeat is not None:
            after_repeat(r, this)
    return samples


def medians(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The median of each case's samples (``interleave``'s result)."""
    return {name: statistics.median(values) for name, values in samples.items()}


# ---------------------------------------------------------------- outputs


def output_paths(names: Sequence[str], repo_paths: Sequence[Path], *, full: bool,
                 out_dir: Path | None, prefix: str) -> list[Path]:
    """Where a benchmark's files go: ``out_dir/NAME`` when given; the repository's
    ``repo_paths`` for the full benchmark; else ``NAME`` in a new temporary directory
    (a smoke run or a subset never overwrites the committed results)."""
    if out_dir is None and full:
        return list(repo_paths)
    where = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix=prefix))
    return [where / name for name in names]


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON (numpy scalars as floats), creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float) + "\n")


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (for docs), else as given."""
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]],
             numeric: bool = False) -> list[str]:
    """A markdown table's lines; with ``numeric`` every column but the first is
    right-aligned."""
    rule = "|---|" + "".join("---:|" if numeric else "---|" for _ in header[1:])
    return [_md_row(header), rule, *(_md_row(row) for row in rows)]


def _md_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


# ---------------------------------------------------------------- formatting


def fmt_opt(value: float | None, fmt: str) -> str:
    """``format(value, fmt)``, or "n/a" for None."""
    return "n/a" if value is None else format(value, fmt)


def fmt_bytes(n: float) -> str:
    """Bytes as B, kB or MB (2 decimals below 100 units)."""
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if n < 100 * scale else f"{n / scale:.0f} {unit}"
    return f"{n:.0f} B"


def mean_or_none(values: Sequence[float]) -> float | None:
    """The mean, or None for no values."""
    return statistics.fmean(values) if values else None
