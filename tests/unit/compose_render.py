"""The Docker compose files in docker/, resolved offline by ``docker-compose -f FILE config``
(compose v1; cached per file), and what the compose tests read from a resolved service: the
Flower executable it runs and its command parsed by that executable's own parser, its
mounts, published ports, flags and Docker secrets."""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.unit.flower_executables import dockerfile_entrypoint, flower_parsers

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = shutil.which("docker-compose")
HOSPITAL_ENV = {
    "SUPERLINK_ADDRESS": "superlink.example.org:9093",
    "CA_CERT": "/etc/fedapp/ca.crt",
    "NODE_KEY": "/etc/fedapp/hospital-a",
    "HOSPITAL_DATA": "/srv/fedapp-data",
}
# What every docker-compose command on a federation file needs (docker/.env at a site).
FEDERATION_ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-password"}
MONITORING = REPO / "monitoring"
SECRETS_DIR = PurePosixPath("/run/secrets")


@functools.cache
def resolved(name: str, with_env: bool = True) -> dict[str, Any]:
    """``docker-compose -f docker/NAME config``, parsed."""
    result = compose_config(name, with_env)
    assert result.returncode == 0, f"docker-compose config {name} failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def compose_config(name: str, with_env: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {**HOSPITAL_ENV, **FEDERATION_ENV}}
    if with_env:
        env.update(HOSPITAL_ENV)
        env.update(FEDERATION_ENV)
    assert COMPOSE is not None
    return subprocess.run([COMPOSE, "--env-file", empty_env_file(), "-f", str(DOCKER / name),
                           "config"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


@functools.cache
def empty_env_file() -> str:
    """An empty env file for docker-compose, so that an operator's docker/.env (git-ignored)
    does not leak into the tests."""
    fd, path = tempfile.mkstemp(suffix=".env")
    os.close(fd)
    atexit.register(os.unlink, path)
    return path



def executable(service: dict[str, Any]) -> str | None:
    """The Flower executable a service's container runs (its image's entrypoint)."""
    image = str(service.get("image", ""))
    if image.startswith("flwr/superlink:"):
        return "flower-superlink"
    if image.startswith("flwr/supernode:"):
        return "flower-supernode"
    if "build" in service:
        return dockerfile_entrypoint(service["build"]["dockerfile"])
    return None


def parse(service: dict[str, Any]) -> argparse.Namespace:
    """Parse the service's command exactly as its Flower executable would."""
    exe = executable(service)
    assert exe in flower_parsers(), f"not a Flower service: {service.get('image')}"
    command = [str(c) for c in service["command"]]
    try:
        return flower_parsers()[exe]().parse_args(command)
    except SystemExit as exc:
        raise AssertionError(f"{exe} rejects {command} (exit {exc.code})") from exc


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each volume entry (short syntax, as resolved)."""
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            out.append((str(entry.get("source")), str(entry["target"]),
                        bool(entry.get("read_only"))))
            continue
        source, target, *mode = str(entry).split(":")
        out.append((source, target, bool(mode) and "ro" in mode[0].split(",")))
    return out


def mount_for(service: dict[str, Any], path: str) -> tuple[str, str, bool]:
    """The mount whose target contains ``path`` (the innermost, as mounts nest)."""
    holding = [m for m in mounts(service) if PurePosixPath(path).is_relative_to(m[1])]
    if not holding:
        raise AssertionError(
            f"{path} is on no mount of {service.get('image')}: {mounts(service)}")
    return max(holding, key=lambda m: len(PurePosixPath(m[1]).parts))


def host_path(service: dict[str, Any], path: str) -> Path:
    """The host file behind ``path`` in the service's container (on a bind mount)."""
    source, target, _ = mount_for(service, path)
    assert source.startswith("/"), f"{path} is on volume {source}, not a host directory"
    return Path(source) / PurePosixPath(path).relative_to(target)


def flag_value(service: dict[str, Any], name: str) -> str:
    """The value of the service command's ``--name=value``."""
    values = [c.split("=", 1)[1] for c in map(str, service["command"])
              if c.startswith(f"{name}=")]
    assert len(values) == 1, f"{name}= in {service['command']}"
    return values[0]


def repository_mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The service's bind mounts (host directories and files), each checked: it exists in
    monitoring/ and is read-only."""
    binds = [m for m in mounts(service) if m[0].startswith("/")]
    for source, target, read_only in binds:
        assert Path(source).exists(), f"{source} (mounted at {target}) does not exist"
        assert Path(source).is_relative_to(MONITORING), f"{source} is not in monitoring/"
        assert read_only, f"{target} is mounted writable"
    return binds


def published_ports(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host ip, published, target) of each port entry."""
    out = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            out.append((str(entry.get("host_ip", "")), str(entry["published"]),
                        str(entry["target"])))
            continue
        *host, published, target = str(entry).split("/")[0].split(":")
        out.append((host[0] if host else "", published, target))
    return out


def secret_path(service: dict[str, Any], path: str | None) -> str:
    """The secret ``path`` (/run/secrets/NAME) names; it must be one the service gets."""
    assert path, "no file given"
    pure = PurePosixPath(path)
    assert pure.parent == SECRETS_DIR, f"{path} is not a Docker secret"
    names = {s["source"] if isinstance(s, dict) else s for s in service.get("secrets", [])}
    assert pure.name in names, f"{path}: secret {pure.name!r} not granted ({sorted(names)})"
    return pure.name


def node_config(args: argparse.Namespace) -> dict[str, Any]:
    from flwr.common.config import parse_config_args

    return parse_config_args([args.node_config])
