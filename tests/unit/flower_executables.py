"""The installed Flower's executables as the Docker and Kubernetes deployments run them:
each executable's own argument parser, the entrypoint of this repository's app images
(``docker/Dockerfile.*``), and the legacy flags and ports no deployment may use. Shared by
``test_docker_compose.py`` and the k8s tests."""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Flags and ports of older Flower releases that 1.41 still parses (hidden or deprecated)
# but that belong to the multi-port SuperLink of <= 1.28, or are ignored.
LEGACY_FLAGS = {
    "--fleet-api-address", "--fleet-api-type", "--control-api-address",
    "--serverappio-api-address", "--clientappio-api-address", "--appio-api-address",
    "--plugin-type", "--auth-list-public-keys", "--auth-supernode-public-key",
    "--appio-ssl-certfile", "--appio-ssl-keyfile", "--appio-ssl-ca-certfile",
    "--allow-runtime-dependency-installation",
}
LEGACY_PORTS = {"9091", "9092"}


@functools.cache
def flower_parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    """Argument parser factories of the installed Flower executables, by executable."""
    from flwr.supercore.cli.flower_superexec import _parse_args as superexec_parser
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    return {
        "flower-superlink": _parse_args_run_superlink,
        "flower-supernode": _parse_args_run_supernode,
        "flower-superexec": superexec_parser,
    }


def dockerfile_entrypoint(dockerfile: str) -> str:
    text = (REPO / dockerfile).read_text()
    match = re.search(r'^ENTRYPOINT \["([^"]+)"\]', text, re.MULTILINE)
    assert match, f"{dockerfile} has no exec-form ENTRYPOINT"
    return match.group(1)
