"""``python -m fedapp.tracking.registry``: list, promote, roll back and export versions.

The operations are ``fedapp.tracking.registry``'s; this module parses the command line and
prints. ``python -m fedapp.tracking.registry`` runs ``main`` here (as does
``python -m fedapp.tracking.registry_cli``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedapp.tracking.registry import (
    RegistryError,
    champion_of,
    export,
    format_table,
    list_versions,
    model_name_for,
    promote,
    rollback,
)
from fedapp.tracking.store import TrackingError, connect, resolve_tracking_uri

DESCRIPTION = ("Model registry: versions of a registered model, the champion, promotion, "
               "rollback, export.")


def _version_arg(value: str) -> str:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"VERSION={value!r} must be a positive integer")
    return str(int(value))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fedapp.tracking.registry",
                                     description=DESCRIPTION)
    parser.add_argument("--tracking-uri", default="",
                        help="default: $MLFLOW_TRACKING_URI, else sqlite in ~/.fedapp/runs")
    parser.add_argument("--name", default=model_name_for("digits"),
                        help="registered model name (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list versions")
    sub.add_parser("promote", help="make VERSION the champion").add_argument(
        "version", type=_version_arg)
    sub.add_parser("rollback", help="give champion back to the previous champion")
    exp = sub.add_parser("export", help="write VERSION's model.pt and config.json to PATH")
    exp.add_argument("version", type=_version_arg)
    exp.add_argument("path", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (1 with a one-line error on stderr)."""
    args = _parser().parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        client = connect(uri)
        if args.command == "list":
            print(format_table(list_versions(client, args.name)))
        elif args.command == "promote":
            if champion_of(client, args.name) == args.version:
                print(f"{args.name}: v{args.version} is already the champion")
            else:
                before = promote(client, args.name, args.version)
                print(f"{args.name}: champion v{before or '-'} -> v{args.version}")
        elif args.command == "rollback":
            before, after = rollback(client, args.name)
            print(f"{args.name}: champion v{before or '-'} -> v{after} (rolled back)")
        else:
            for path in export(client, uri, args.name, args.version, args.path):
                print(path)
    except (RegistryError, TrackingError, MlflowException) as exc:
        print(f"error: {exc} (tracking URI {uri})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
