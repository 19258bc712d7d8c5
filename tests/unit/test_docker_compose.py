"""The Docker compose files and Dockerfiles in docker/, checked without a Docker engine.

``docker-compose -f FILE config`` (compose v1 validates and resolves a file offline)
turns every compose file into its final form; the tests then check the topology
(services, ports, volumes, mounts, secrets) and parse every Flower container's command
with the argument parser of the installed Flower (1.41) executable it runs, so a flag
that 1.41 does not know, or a missing required one, fails here rather than in a
container. Legacy (1.28-era) flags and ports that 1.41 still tolerates are refused too.
The federation files' Prometheus and Grafana are checked against the files they mount
from monitoring/ (scrape target, rule files, provisioning, dashboards).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import flwr
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = shutil.which("docker-compose")
FEDERATION_FILES = ("compose.yml", "compose.tls.yml")
HOSPITAL_FILE = "compose.hospital.yml"
ALL_FILES = (*FEDERATION_FILES, HOSPITAL_FILE)
HOSPITAL_ENV = {
    "SUPERLINK_ADDRESS": "superlink.example.org:9093",
    "CA_CERT": "/etc/fedapp/ca.crt",
    "NODE_KEY": "/etc/fedapp/hospital-a",
    "HOSPITAL_DATA": "/srv/fedapp-data",
}
# What every docker-compose command on a federation file needs (docker/.env at a site).
FEDERATION_ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-password"}
MONITORING = REPO / "monitoring"
FLOWER_UID = "49999"
SECRETS_DIR = PurePosixPath("/run/secrets")
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
HOSPITALS = (1, 2, 3)

pytestmark = pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose (v1) is not on PATH; it resolves compose files offline",
)


# ---------------------------------------------------------------- helpers


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


# ------------------------------------------------------------------ tests


def test_compose_files_present() -> None:
    assert sorted(p.name for p in DOCKER.glob("compose*.yml")) == sorted(ALL_FILES)


@pytest.mark.parametrize("name", ALL_FILES)
def test_flower_commands_parse_with_the_installed_flower(name: str) -> None:
    services = resolved(name)["services"]
    flower = {n: s for n, s in services.items() if executable(s)}
    assert flower, f"no Flower services in {name}"
    for service_name, service in flower.items():
        command = [str(c) for c in service["command"]]
        parse(service)
        legacy = sorted({c.split("=")[0] for c in command} & LEGACY_FLAGS)
        assert not legacy, f"{name}:{service_name} uses pre-1.41 flags {legacy}"
        image = str(service["image"])
        if image.startswith("flwr/"):
            assert image.endswith(f":{flwr.__version__}"), f"{service_name}: {image}"
        else:
            assert service["build"]["args"]["FLWR_VERSION"] == flwr.__version__
    for service_name, service in services.items():
        for _, published, target in published_ports(service):
            assert not {published, target} & LEGACY_PORTS, f"{service_name} uses a 1.28 port"
        assert service.get("environment", {}).get("FLWR_TELEMETRY_ENABLED", "0") == "0"


@pytest.mark.parametrize("name", FEDERATION_FILES)
def test_federation_topology(name: str) -> None:
    services = resolved(name)["services"]
    expected = {"volume-permissions", "superlink", "serverapp", "mlflow", "prometheus",
                "grafana"}
    expected |= {f"{kind}-{n}" for kind in ("supernode", "clientapp") for n in HOSPITALS}
    assert set(services) == expected

    link = services["superlink"]
    link_args = parse(link)
    assert (link_args.host, link_args.port, link_args.isolation) == ("0.0.0.0", 9093, "process")
    assert published_ports(link) == [("", "9093", "9093")], "one port for all SuperLink APIs"
    assert not link_args.runtime_dependency_install
    # State persists on a named volume that the permissions job hands to uid 49999 first.
    db_volume, _, read_only = mount_for(link, link_args.database)
    assert db_volume in resolved(name)["volumes"] and not read_only
    init = services["volume-permissions"]
    assert FLOWER_UID + ":" + FLOWER_UID in init["command"]
    init_target = next(t for s, t, _ in mounts(init) if s == db_volume)
    assert init_target in init["command"]
    assert link["depends_on"]["volume-permissions"]["condition"] == \
        "service_completed_successfully"

    serverapp = parse(services["serverapp"])
    assert serverapp.runtime_api_address == "superlink:9093"
    output_volume, _, _ = mount_for(services["serverapp"], "/outputs/runs")
    assert any(s == output_volume for s, _, _ in mounts(init))

    ports, data_sources = set(), set()
    for n in HOSPITALS:
        node_service, app_service = services[f"supernode-{n}"], services[f"clientapp-{n}"]
        node = parse(node_service)
        assert (node.superlink, node.isolation, node.host) == (
            "superlink:9093", "process", "127.0.0.1")
        assert not published_ports(node_service), "a SuperNode only dials out"
        ports.add(node.port)
        app = parse(app_service)
        # The ClientApp container shares its SuperNode's network namespace and reaches
        # its Runtime API on loopback, on that SuperNode's own port.
        assert app_service["network_mode"] == f"service:supernode-{n}"
        assert app.runtime_api_address == f"127.0.0.1:{node.port}"
        # The ClientApp reads the hospital's file: the hospital's own directory, read-only.
        data_path = node_config(node)["data-path"]
        source, _, read_only = mount_for(app_service, data_path)
        assert read_only, f"clientapp-{n} mounts its data writable"
        data_sources.add(source)
        assert Path(source).name == f"hospital-{n}"
    assert len(ports) == len(HOSPITALS), "each SuperNode needs its own Runtime API port"
    assert len(data_sources) == len(HOSPITALS), "hospitals share a data directory"

    mlflow = services["mlflow"]
    assert published_ports(mlflow) == [("127.0.0.1", "5000", "5000")]
    store = mlflow["command"][mlflow["command"].index("--backend-store-uri") + 1]
    assert store.startswith("sqlite:////")
    store_volume, _, _ = mount_for(mlflow, store.removeprefix("sqlite:///"))
    assert store_volume in resolved(name)["volumes"]


@pytest.mark.parametrize("name", FEDERATION_FILES)
def test_prometheus_scrapes_the_serverapp_with_the_repositorys_rules(name: str) -> None:
    config = resolved(name)
    services = config["services"]
    prometheus = services["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"]), "pinned"
    assert published_ports(prometheus) == [("127.0.0.1", "9090", "9090")], "host loopback"
    assert flag_value(prometheus, "--web.listen-address").endswith(":9090")
    assert repository_mounts(prometheus)
    in_container = PurePosixPath(flag_value(prometheus, "--config.file"))
    config_file = host_path(prometheus, str(in_container))
    assert config_file == MONITORING / "prometheus" / "prometheus.yml"
    storage, _, read_only = mount_for(prometheus, flag_value(prometheus, "--storage.tsdb.path"))
    assert storage in config["volumes"] and not read_only, "the TSDB on a named volume"

    scrape = yaml.safe_load(config_file.read_text())
    # Rule files are relative to the config file: in the container as in the repository.
    assert scrape["rule_files"]
    for rule_file in scrape["rule_files"]:
        assert host_path(prometheus, str(in_container.parent / rule_file)).is_file(), rule_file
    # The one target is the serverapp service on the run config's metrics-port, which the
    # service exposes on the compose network only.
    targets = [t for job in scrape["scrape_configs"] for static in job["static_configs"]
               for t in static["targets"]]
    run_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    metrics_port = run_config["config"]["metrics-port"]
    assert metrics_port == 9662
    assert targets == [f"serverapp:{metrics_port}"]
    serverapp = services["serverapp"]
    assert str(metrics_port) in {str(p) for p in serverapp.get("expose", [])}
    assert not published_ports(serverapp), "the metrics are not published on the host"
    # The ServerApp listens on loopback unless the run says otherwise: the file shows how.
    assert "metrics-address='0.0.0.0'" in (DOCKER / name).read_text()


@pytest.mark.parametrize("name", FEDERATION_FILES)
def test_grafana_provisions_the_repositorys_dashboards(name: str) -> None:
    config = resolved(name)
    services = config["services"]
    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana:11\.\d+\.\d+", grafana["image"]), "pinned"
    assert published_ports(grafana) == [("127.0.0.1", "3000", "3000")], "host loopback"
    assert repository_mounts(grafana)
    provisioning = PurePosixPath("/etc/grafana/provisioning")
    datasources = host_path(grafana, str(provisioning / "datasources" / "prometheus.yml"))
    assert datasources == MONITORING / "grafana" / "provisioning" / "datasources" / \
        "prometheus.yml"
    providers = host_path(grafana, str(provisioning / "dashboards" / "fedapp.yml"))
    assert providers.is_file()
    # The dashboard provider reads the directory the repository's dashboards are mounted at.
    for provider in yaml.safe_load(providers.read_text())["providers"]:
        folder = host_path(grafana, provider["options"]["path"])
        assert folder == MONITORING / "grafana" / "dashboards"
        assert sorted(folder.glob("*.json")), f"no dashboards in {folder}"
    # The datasource is the prometheus service on its web port.
    source = yaml.safe_load(datasources.read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in services
    data, _, read_only = mount_for(grafana, "/var/lib/grafana/grafana.db")
    assert data in config["volumes"] and not read_only, "Grafana's state on a named volume"
    # The admin password comes from the environment, with no default: without it, no config.
    environment = grafana["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"] == FEDERATION_ENV["GRAFANA_ADMIN_PASSWORD"]
    raw = yaml.safe_load((DOCKER / name).read_text())["services"]["grafana"]["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}",
                        raw["GF_SECURITY_ADMIN_PASSWORD"]), "required, no default"
    missing = compose_config(name, with_env=False)
    assert missing.returncode != 0 and "set GRAFANA_ADMIN_PASSWORD" in missing.stderr


def test_tls_variant_secures_every_link() -> None:
    config = resolved("compose.tls.yml")
    services = config["services"]
    link = parse(services["superlink"])
    assert not link.insecure and link.enable_supernode_auth
    for path in (link.ssl_ca_certfile, link.ssl_certfile, link.ssl_keyfile):
        secret_path(services["superlink"], path)
    link_secret = secret_path(services["superlink"], link.superexec_auth_secret_file)

    serverapp = parse(services["serverapp"])
    assert not serverapp.insecure
    assert secret_path(services["serverapp"], serverapp.root_certificates) == "ca.crt"
    assert secret_path(services["serverapp"], serverapp.superexec_auth_secret_file) == \
        link_secret

    key_files = set()
    for n in HOSPITALS:
        node_service = services[f"supernode-{n}"]
        node = parse(node_service)
        assert not node.insecure
        assert secret_path(node_service, node.root_certificates) == "ca.crt"
        key = secret_path(node_service, node.auth_supernode_private_key)
        other_keys = {f"hospital-{m}-key" for m in HOSPITALS if m != n}
        granted = {s["source"] for s in node_service["secrets"]}
        assert not granted & other_keys, f"supernode-{n} can read another hospital's key"
        key_files.add(config["secrets"][key]["file"])
        # Plain HTTP only on loopback inside the hospital pair's own namespace.
        app = parse(services[f"clientapp-{n}"])
        assert app.insecure and app.runtime_api_address.startswith("127.0.0.1:")
        assert services[f"clientapp-{n}"]["network_mode"] == f"service:supernode-{n}"
    assert len(key_files) == len(HOSPITALS)
    for secret in config["secrets"].values():
        assert Path(secret["file"]).is_relative_to(REPO / "certificates" / "out")


def test_plain_variant_is_plain_everywhere() -> None:
    """compose.yml is the no-TLS trial: Flower refuses node auth without TLS."""
    services = resolved("compose.yml")["services"]
    link = parse(services["superlink"])
    assert link.insecure and not link.enable_supernode_auth
    assert all(parse(services[f"supernode-{n}"]).insecure for n in HOSPITALS)
    assert parse(services["serverapp"]).insecure


def test_hospital_file_runs_one_authenticated_supernode() -> None:
    missing = compose_config(HOSPITAL_FILE, with_env=False)
    assert missing.returncode != 0 and "set " in missing.stderr, missing.stderr
    services = resolved(HOSPITAL_FILE)["services"]
    assert set(services) == {"supernode", "clientapp"}
    node = parse(services["supernode"])
    assert node.superlink == HOSPITAL_ENV["SUPERLINK_ADDRESS"] and not node.insecure
    assert node.isolation == "process" and node.host == "127.0.0.1"
    secret_path(services["supernode"], node.root_certificates)
    secret_path(services["supernode"], node.auth_supernode_private_key)
    assert node_config(node) == {"data-path": "/data/hospital.csv"}
    app = parse(services["clientapp"])
    assert app.runtime_api_address == f"127.0.0.1:{node.port}"
    assert services["clientapp"]["network_mode"] == "service:supernode"
    assert mount_for(services["clientapp"], "/data/hospital.csv") == (
        HOSPITAL_ENV["HOSPITAL_DATA"], "/data", True)
    secrets = resolved(HOSPITAL_FILE)["secrets"]
    assert {k: v["file"] for k, v in secrets.items()} == {
        "ca.crt": HOSPITAL_ENV["CA_CERT"], "node-key": HOSPITAL_ENV["NODE_KEY"]}


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile.serverapp",
                                        "docker/Dockerfile.clientapp"])
def test_dockerfiles_build_on_flowers_superexec_image(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    assert f"ARG FLWR_VERSION={flwr.__version__}\n" in text
    assert "FROM flwr/superexec:${FLWR_VERSION}\n" in text
    assert dockerfile_entrypoint(dockerfile) == "flower-superexec"
    assert "https://download.pytorch.org/whl/cpu" in text, "torch must come from the CPU index"
    ignore = (REPO / f"{dockerfile}.dockerignore").read_text().splitlines()
    assert "*" in ignore and "!pyproject.toml" in ignore and "!docker/requirements.py" in ignore
    match = re.search(r'ARG CLIENT_DEPENDENCIES="([^"]+)"', text)
    selection = ["--only", *match.group(1).split()] if match else ["--exclude", "flwr", "torch"]
    result = subprocess.run([sys.executable, str(DOCKER / "requirements.py"),
                             str(REPO / "pyproject.toml"), *selection],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    reqs = result.stdout.split()
    base = ("flwr[", "flwr>", "flwr=", "torch")  # from the base image / the CPU index
    assert reqs and not any(r.lower().startswith(base) for r in reqs), reqs
    if match:  # the hospital image stays lean
        assert not any(r.startswith(("mlflow", "hydra", "matplotlib", "scikit-learn"))
                       for r in reqs), reqs
