"""Print the project's dependencies from pyproject.toml, one per line, for an image.

    python requirements.py PYPROJECT [--only NAME ...] [--exclude NAME ...]

The images get ``flwr`` from Flower's base image (same version) and a CPU-only
``torch`` from PyTorch's CPU index, so those are usually excluded here; the
version ranges come from pyproject.toml, so the images never drift from it.
Names compare case-insensitively with ``-``/``_``/``.`` treated alike (PEP 503).
An ``--only`` name missing from pyproject.toml is an error.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies(pyproject: Path) -> dict[str, str]:
    """``{normalized name: requirement}`` of ``[project] dependencies``."""
    with pyproject.open("rb") as f:
        reqs = tomllib.load(f)["project"]["dependencies"]
    out = {}
    for req in reqs:
        match = NAME.match(req)
        if not match:
            raise SystemExit(f"cannot parse dependency {req!r} in {pyproject}")
        out[normalize(match.group(1))] = req
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    deps = dependencies(args.pyproject)
    names = list(deps)
    if args.only is not None:
        wanted = [normalize(n) for n in args.only]
        missing = [n for n in wanted if n not in deps]
        if missing:
            parser.error(f"not in {args.pyproject}: {', '.join(missing)}")
        names = wanted
    excluded = {normalize(n) for n in args.exclude}
    for name in names:
        if name not in excluded:
            print(deps[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
