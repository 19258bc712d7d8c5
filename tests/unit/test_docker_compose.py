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

import re
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import flwr
import pytest
import yaml

from tests.unit.compose_render import (
    COMPOSE,
    DOCKER,
    FEDERATION_ENV,
    HOSPITAL_ENV,
    MONITORING,
    REPO,
    compose_config,
    executable,
    flag_value,
    host_path,
    mount_for,
    mounts,
    node_config,
    parse,
    published_ports,
    repository_mounts,
    resolved,
    secret_path,
)
from tests.unit.flower_executables import LEGACY_FLAGS, LEGACY_PORTS, dockerfile_entrypoint

FEDERATION_FILES = ("compose.yml", "compose.tls.yml")
HOSPITAL_FILE = "compose.hospital.yml"
ALL_FILES = (*FEDERATION_FILES, HOSPITAL_FILE)
FLOWER_UID = "49999"
HOSPITALS = (1, 2, 3)

pytestmark = pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose (v1) is not on PATH; it resolves compose files offline",
)


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
