"""The Kubernetes manifests in deploy/k8s/, rendered and checked offline (no cluster).

Each kustomization is rendered with ``kubectl kustomize`` (kustomize v5) and every
rendered document is validated against the Kubernetes 1.30 API schemas
(``kubernetes_validate``, strict: an unknown field fails). Then what matters: every Flower
container's arguments, after Kubernetes' ``$(VAR)`` expansion, are parsed by the
installed Flower's own argument parsers and compared with the TLS Docker deployment
(docker/compose.tls.yml, docker/compose.hospital.yml); files named in the arguments are
followed to the volume that holds them (a Secret, the SuperLink's volumeClaimTemplate,
the hospital's read-only data); Services, the Prometheus scrape target and Grafana's
provisioning are followed to the pods and ports they must reach; the hospital's
NetworkPolicy admits nothing and lets out only the SuperLink's port and DNS.

The operator kustomization includes monitoring/ (alert rules, Grafana provisioning and
dashboards), so it renders only where those files exist.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import flwr
import pytest
import yaml

from fedapp.config.node import NodeConfig
from tests.unit.test_docker_compose import dockerfile_entrypoint, flower_parsers

REPO = Path(__file__).resolve().parents[2]
OPERATOR = "deploy/k8s/operator"
HOSPITAL = "deploy/k8s/hospital/base"
EXAMPLE = "deploy/k8s/hospital/example"
KUSTOMIZATIONS = (OPERATOR, HOSPITAL, EXAMPLE)
HOSPITALS = (HOSPITAL, EXAMPLE)
K8S_VERSION = "1.30"
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl")
WORKLOADS = ("Deployment", "StatefulSet")
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not on PATH (or KUBECTL): it renders the kustomizations offline",
)

Doc = dict[str, Any]


# ---------------------------------------------------------------- rendering


@functools.cache
def kustomize_major() -> int:
    assert KUBECTL is not None
    out = subprocess.run([KUBECTL, "version", "--client"], capture_output=True, text=True,
                         timeout=60, check=False).stdout
    match = re.search(r"Kustomize Version: v(\d+)", out)
    return int(match.group(1)) if match else 0


@functools.cache
def rendered(path: str) -> tuple[Doc, ...]:
    """``kubectl kustomize PATH``, parsed."""
    assert KUBECTL is not None
    major = kustomize_major()
    assert major >= 5, (f"{KUBECTL} embeds kustomize v{major or '<3'}; the manifests need "
                        "kustomize v5 (kubectl >= 1.27)")
    result = subprocess.run([KUBECTL, "kustomize", str(REPO / path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    assert docs, f"{path} renders nothing"
    return docs


def named(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name!r}"
    return found[0]


def workload(docs: tuple[Doc, ...], app: str, kind: str | None = None) -> Doc:
    """The Deployment or StatefulSet labelled app.kubernetes.io/name=APP."""
    found = [d for d in docs if d["kind"] in WORKLOADS
             and d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == app]
    assert len(found) == 1, f"{len(found)} workloads for {app!r}"
    if kind:
        assert found[0]["kind"] == kind, f"{app} is a {found[0]['kind']}, not a {kind}"
    return found[0]


def pod(doc: Doc) -> Doc:
    return doc["spec"]["template"]["spec"]


def all_containers(doc: Doc) -> list[Doc]:
    return [*pod(doc).get("initContainers", []), *pod(doc)["containers"]]


def container(doc: Doc, name: str) -> Doc:
    found = [c for c in pod(doc)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{doc['metadata']['name']} has no container {name!r}"
    return found[0]


def selects(selector: dict[str, str], doc: Doc) -> bool:
    labels = doc["spec"]["template"]["metadata"].get("labels", {})
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def services_for(docs: tuple[Doc, ...], doc: Doc) -> list[Doc]:
    return [d for d in docs if d["kind"] == "Service" and selects(d["spec"]["selector"], doc)]


def container_port(box: Doc, port: int | str) -> int:
    """The port number a probe or Service targets (a number or a port's name)."""
    numbers = {p["containerPort"] for p in box.get("ports", [])}
    names = {p["name"]: p["containerPort"] for p in box.get("ports", []) if "name" in p}
    number = names.get(port) if isinstance(port, str) else port
    assert number in numbers, f"{box['name']} exposes no port {port!r}"
    return number


def service_port(docs: tuple[Doc, ...], doc: Doc, number: int) -> tuple[str, int]:
    """(Service name, Service port) that reaches container port NUMBER of DOC's pod."""
    for service in services_for(docs, doc):
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for box in pod(doc)["containers"]:
                names = {p.get("name"): p["containerPort"] for p in box.get("ports", [])}
                if (names.get(target) if isinstance(target, str) else target) == number:
                    return service["metadata"]["name"], port["port"]
    raise AssertionError(f"no Service reaches port {number} of {doc['metadata']['name']}")


# ------------------------------------------------------------ containers


def env_of(docs: tuple[Doc, ...], box: Doc) -> dict[str, str]:
    """The container's environment as far as ConfigMaps give it (Secrets left out)."""
    env: dict[str, str] = {}
    for source in box.get("envFrom", []):
        env.update(named(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in box.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = named(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def args_of(docs: tuple[Doc, ...], box: Doc) -> list[str]:
    """The container's arguments with $(VAR) expanded as the kubelet does."""
    env = env_of(docs, box)
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(a))
            for a in box.get("args", [])]


def flower_executable(image: str) -> str:
    repo = image.rsplit(":", 1)[0]
    if repo.endswith("flwr/superlink"):
        return "flower-superlink"
    if repo.endswith("flwr/supernode"):
        return "flower-supernode"
    for app in ("serverapp", "clientapp"):
        if repo.endswith(f"fedapp-{app}"):
            return dockerfile_entrypoint(f"docker/Dockerfile.{app}")
    raise AssertionError(f"{image} is no Flower image")


def flower_args(docs: tuple[Doc, ...], box: Doc) -> argparse.Namespace:
    """Parse the container's arguments with its Flower executable's own parser."""
    exe, args = flower_executable(box["image"]), args_of(docs, box)
    assert "command" not in box, f"{box['name']} replaces the image's entrypoint"
    try:
        return flower_parsers()[exe]().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{exe} rejects {args} (exit {exc.code})") from exc


def mount_for(doc: Doc, box: Doc, path: str) -> tuple[Doc, Doc]:
    """(volumeMount, volume) holding PATH in the container; a volumeClaimTemplate's
    volume is returned as {"name": ..., "volumeClaimTemplate": True}."""
    mounts = [m for m in box.get("volumeMounts", [])
              if PurePosixPath(path).is_relative_to(m["mountPath"])]
    assert mounts, f"{path} is on no volume of {box['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    templates = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
    if mount["name"] in templates:
        return mount, {"name": mount["name"], "volumeClaimTemplate": True}
    volume = [v for v in pod(doc).get("volumes", []) if v["name"] == mount["name"]]
    assert len(volume) == 1, f"volume {mount['name']} of {box['name']} is not defined"
    return mount, volume[0]


def secret_file(doc: Doc, box: Doc, path: str) -> tuple[str, str]:
    """(Secret name, key) of the file PATH, which must come read-only from a Secret."""
    mount, volume = mount_for(doc, box, path)
    assert mount.get("readOnly"), f"{path}: secrets mounted writable in {box['name']}"
    relative = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    sources = [s["secret"] for s in volume.get("projected", {}).get("sources", [])
               if "secret" in s]
    if "secret" in volume:
        sources.append({"name": volume["secret"]["secretName"], **volume["secret"]})
    for source in sources:
        items = source.get("items")
        if items is None:
            return source["name"], relative
        for item in items:
            if item["path"] == relative:
                return source["name"], item["key"]
    raise AssertionError(f"{path} in {box['name']} comes from no Secret")


def config_file(docs: tuple[Doc, ...], doc: Doc, box: Doc, path: str) -> Any:
    """The parsed YAML of the file PATH, which must come from a rendered ConfigMap."""
    mount, volume = mount_for(doc, box, path)
    assert "configMap" in volume, f"{path} is not from a ConfigMap"
    key = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    return yaml.safe_load(named(docs, "ConfigMap", volume["configMap"]["name"])["data"][key])


def config_map_at(docs: tuple[Doc, ...], doc: Doc, box: Doc, directory: str) -> Doc:
    """The ConfigMap mounted exactly at DIRECTORY."""
    mount, volume = mount_for(doc, box, f"{directory}/x")
    assert mount["mountPath"] == directory and "configMap" in volume, \
        f"no ConfigMap mounted at {directory} in {box['name']}"
    return named(docs, "ConfigMap", volume["configMap"]["name"])


def probes(box: Doc) -> Iterator[Doc]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in box:
            yield box[kind]


# ---------------------------------------------------------------- compose


def compose_defaults(value: Any) -> Any:
    """A compose value with ${VAR:-default} resolved to its default (${VAR:?..} to <VAR>)."""
    if isinstance(value, str):
        value = re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", value)
        return re.sub(r"\$\{(\w+):\?[^}]*\}", r"<\1>", value)
    if isinstance(value, list):
        return [compose_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: compose_defaults(v) for k, v in value.items()}
    return value


@functools.cache
def compose(name: str) -> dict[str, Any]:
    return compose_defaults(yaml.safe_load((REPO / "docker" / name).read_text()))["services"]


def compose_command(name: str, service: str) -> list[str]:
    return [str(a) for a in compose(name)[service]["command"]]


def ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def images(docs: tuple[Doc, ...]) -> dict[str, str]:
    """Image repository -> tag of every container."""
    out = {}
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            for box in all_containers(doc):
                repo, _, tag = box["image"].rpartition(":")
                assert repo and "/" not in tag, f"{box['name']}: {box['image']} has no tag"
                out[repo] = tag
    return out


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_document_validates_against_the_kubernetes_api(path: str) -> None:
    import kubernetes_validate

    failures = []
    for doc in rendered(path):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
    assert not failures, "\n".join(failures)
    # Keys are never part of the manifests: Secrets are created beforehand, by name.
    assert not [d for d in rendered(path) if d["kind"] == "Secret"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_images_are_the_docker_deployments(path: str) -> None:
    rendered_images = images(rendered(path))
    for name in ("compose.tls.yml", "compose.hospital.yml"):
        for service in compose(name).values():
            repo, _, tag = service["image"].rpartition(":")
            if repo in rendered_images:
                assert rendered_images[repo] == tag, f"{repo}: {rendered_images[repo]} != {tag}"
    for repo, tag in rendered_images.items():
        assert tag != "latest", repo
        if repo.startswith("flwr/"):
            assert tag == flwr.__version__, f"{repo}:{tag} is not the tested flwr"
    expected = ({"flwr/superlink", "fedapp-serverapp", "ghcr.io/mlflow/mlflow",
                 "prom/prometheus", "grafana/grafana"} if path == OPERATOR
                else {"flwr/supernode", "fedapp-clientapp"})
    assert set(rendered_images) == expected


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_container_has_requests_and_limits(path: str) -> None:
    for doc in rendered(path):
        if doc["kind"] not in WORKLOADS:
            continue
        for box in all_containers(doc):
            resources = box.get("resources", {})
            for bound in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(bound, {}))
                assert not missing, f"{box['name']}: no {bound} for {sorted(missing)}"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_flower_containers_run_as_flower_does_in_docker(path: str) -> None:
    docs = rendered(path)
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        for box in all_containers(doc):
            if not box["image"].startswith(("flwr/", "fedapp-")):
                continue
            flower_args(docs, box)
            env = env_of(docs, box)
            assert {k: env.get(k) for k in FLOWER_ENV} == FLOWER_ENV, box["name"]
            assert pod(doc)["securityContext"]["runAsUser"] == 49999
            assert pod(doc)["securityContext"]["fsGroup"] == 49999  # volumes writable


def test_superlink_is_a_statefulset_with_its_database_on_its_claim() -> None:
    docs = rendered(OPERATOR)
    link = workload(docs, "superlink", "StatefulSet")
    box = container(link, "superlink")
    assert args_of(docs, box) == compose_command("compose.tls.yml", "superlink")
    args = flower_args(docs, box)
    assert link["spec"]["replicas"] == 1
    mount, volume = mount_for(link, box, args.database)
    assert volume.get("volumeClaimTemplate") and not mount.get("readOnly"), \
        f"--database {args.database} is not on the StatefulSet's own claim"
    assert link["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    # One port for Fleet, Control and Runtime APIs, on every interface, behind a Service.
    assert (args.host, args.isolation) == ("0.0.0.0", "process")
    assert container_port(box, "superlink") == args.port
    name, port = service_port(docs, link, args.port)
    assert (name, port) == ("superlink", 9093)
    assert link["spec"]["serviceName"] == name


def test_superlink_serves_tls_from_secrets_and_requires_node_auth() -> None:
    docs = rendered(OPERATOR)
    link = workload(docs, "superlink")
    box = container(link, "superlink")
    args = flower_args(docs, box)
    assert not args.insecure and args.enable_supernode_auth
    assert not args.runtime_dependency_install
    assert secret_file(link, box, args.ssl_ca_certfile) == ("fedapp-ca", "ca.crt")
    assert secret_file(link, box, args.ssl_certfile) == ("superlink-tls", "tls.crt")
    assert secret_file(link, box, args.ssl_keyfile) == ("superlink-tls", "tls.key")
    assert secret_file(link, box, args.superexec_auth_secret_file) == \
        ("superexec-auth", "superexec-secret")


def test_serverapp_superexec_dials_the_superlink_service_and_exposes_metrics() -> None:
    docs = rendered(OPERATOR)
    link, app = workload(docs, "superlink"), workload(docs, "serverapp", "Deployment")
    link_box, box = container(link, "superlink"), container(app, "serverapp")
    assert args_of(docs, box) == compose_command("compose.tls.yml", "serverapp")
    args, link_args = flower_args(docs, box), flower_args(docs, link_box)
    name, port = service_port(docs, link, link_args.port)
    assert args.runtime_api_address == f"{name}:{port}"
    # Verifies the SuperLink with its CA, proves itself with the SuperLink's secret.
    assert not args.insecure
    assert secret_file(app, box, args.root_certificates) == \
        secret_file(link, link_box, link_args.ssl_ca_certfile)
    assert secret_file(app, box, args.superexec_auth_secret_file) == \
        secret_file(link, link_box, link_args.superexec_auth_secret_file)
    # Runs write to output-dir='/outputs/runs' on a persistent claim.
    mount, volume = mount_for(app, box, "/outputs/runs")
    assert not mount.get("readOnly")
    named(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    # The ServerApp's metrics port (run-config metrics-port, default 9662).
    assert container_port(box, "metrics") == 9662
    assert service_port(docs, app, 9662) == ("serverapp", 9662)


def test_prometheus_scrapes_the_serverapp_metrics_service_and_loads_the_alerts() -> None:
    docs = rendered(OPERATOR)
    prometheus = workload(docs, "prometheus")
    box = container(prometheus, "prometheus")
    flags = dict(a.split("=", 1) for a in box["args"])
    config = config_file(docs, prometheus, box, flags["--config.file"])
    jobs = {job["job_name"]: [t for s in job.get("static_configs", []) for t in s["targets"]]
            for job in config["scrape_configs"]}
    serverapp = service_port(docs, workload(docs, "serverapp"), 9662)
    assert any(t == f"{serverapp[0]}:{serverapp[1]}" for targets in jobs.values()
               for t in targets), f"no job scrapes {serverapp}: {jobs}"
    rules = []
    for pattern in config["rule_files"]:
        directory = str(PurePosixPath(pattern).parent)
        data = config_map_at(docs, prometheus, box, directory)["data"]
        rules += [yaml.safe_load(text) for key, text in data.items()
                  if fnmatch.fnmatch(f"{directory}/{key}", pattern)]
    assert rules and all(r["groups"] for r in rules), "no alert rules loaded"
    # Jobs the rules and dashboards select must be jobs this configuration scrapes.
    texts = [json.dumps(rules)] + [
        text for d in docs if d["kind"] == "ConfigMap" for k, text in d.get("data", {}).items()
        if k.endswith(".json")]
    selected = {m for text in texts for m in re.findall(r'job\s*=\s*\\?"([^"\\]+)', text)}
    assert selected <= set(jobs), f"selected jobs {sorted(selected - set(jobs))} not scraped"


def test_grafana_is_provisioned_from_monitoring() -> None:
    docs = rendered(OPERATOR)
    grafana = workload(docs, "grafana")
    box = container(grafana, "grafana")
    base = "/etc/grafana/provisioning"
    prometheus = workload(docs, "prometheus")
    service, port = service_port(docs, prometheus, container_port(
        container(prometheus, "prometheus"), "http"))
    datasources = [s for text in config_map_at(docs, grafana, box, f"{base}/datasources")
                   ["data"].values() for s in yaml.safe_load(text)["datasources"]]
    urls = [s["url"] for s in datasources if s["type"] == "prometheus"]
    assert urls == [f"http://{service}:{port}"], urls
    providers = [p for text in config_map_at(docs, grafana, box, f"{base}/dashboards")
                 ["data"].values() for p in yaml.safe_load(text)["providers"]]
    assert providers
    files = sorted(p.name for p in (REPO / "monitoring/grafana/dashboards").glob("*.json"))
    for provider in providers:
        dashboards = config_map_at(docs, grafana, box, provider["options"]["path"])["data"]
        assert sorted(dashboards) == files, "monitoring/kustomization.yaml misses dashboards"
        assert all(json.loads(text) for text in dashboards.values())
    password = next(e for e in box["env"] if e["name"] == "GF_SECURITY_ADMIN_PASSWORD")
    assert "secretKeyRef" in password["valueFrom"]


def test_mlflow_keeps_its_store_on_a_claim() -> None:
    docs = rendered(OPERATOR)
    mlflow = workload(docs, "mlflow")
    box = container(mlflow, "mlflow")
    command = compose_command("compose.tls.yml", "mlflow")
    assert box["args"] == command
    store = command[command.index("--backend-store-uri") + 1].removeprefix("sqlite:///")
    _, volume = mount_for(mlflow, box, store)
    named(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    # The ServerApp's tracking-uri='http://mlflow:5000' is a Host the server allows.
    assert service_port(docs, mlflow, 5000) == ("mlflow", 5000)
    assert "mlflow:5000" in command[command.index("--allowed-hosts") + 1].split(",")


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_probes_reach_only_what_listens_on_the_pod_address(path: str) -> None:
    """tcpSocket/httpGet probes come from the kubelet, outside the pod: they must target a
    port bound on 0.0.0.0. The SuperNode binds 127.0.0.1 only: its probe runs inside."""
    docs = rendered(path)
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        for box in all_containers(doc):
            flower = box["image"].startswith(("flwr/superlink", "flwr/supernode"))
            host = flower_args(docs, box).host if flower else "0.0.0.0"
            for probe in probes(box):
                check = probe.get("httpGet") or probe.get("tcpSocket")
                if check:
                    assert host == "0.0.0.0", f"{box['name']}: probe on a {host} port"
                    container_port(box, check["port"])
                    continue
                command = " ".join(probe["exec"]["command"])
                if flower:
                    assert f"127.0.0.1:{flower_args(docs, box).port}" in command, command
            if box["image"].startswith("flwr/supernode"):
                assert "exec" in box.get("livenessProbe", {}), "no SuperNode probe"


@pytest.mark.parametrize("path", HOSPITALS)
def test_hospital_pod_mirrors_the_docker_hospital(path: str) -> None:
    docs = rendered(path)
    hospital = workload(docs, "supernode", "StatefulSet")
    assert hospital["spec"]["replicas"] == 1, "one pod signs with the hospital's key"
    node_box, app_box = container(hospital, "supernode"), container(hospital, "clientapp")
    node_service = compose("compose.hospital.yml")["supernode"]
    flags = {a for a in args_of(docs, node_box) if a.startswith("--")}
    assert flags == {a for a in node_service["command"] if str(a).startswith("--")}
    node = flower_args(docs, node_box)
    assert not node.insecure and (node.isolation, node.host) == ("process", "127.0.0.1")
    assert node.superlink == env_of(docs, node_box)["SUPERLINK_ADDRESS"]
    assert secret_file(hospital, node_box, node.root_certificates) == ("fedapp-ca", "ca.crt")
    assert secret_file(hospital, node_box, node.auth_supernode_private_key) == \
        ("fedapp-node-key", "node-key")
    # The ClientApp SuperExec: in the same pod, on the SuperNode's loopback Runtime API.
    assert app_box["args"] == compose_command("compose.hospital.yml", "clientapp")
    app = flower_args(docs, app_box)
    assert app.insecure and app.runtime_api_address == f"127.0.0.1:{node.port}"
    # The ClientApp reads the data file from a read-only volume; the SuperNode cannot.
    from flwr.common.config import parse_config_args

    config = NodeConfig.from_flower(parse_config_args([node.node_config]))
    assert config.data_path and PurePosixPath(config.data_path).is_relative_to("/data")
    mount, volume = mount_for(hospital, app_box, config.data_path)
    assert mount.get("readOnly") and volume["persistentVolumeClaim"].get("readOnly"), \
        "the hospital's data must be mounted read-only"
    assert not any(PurePosixPath(config.data_path).is_relative_to(m["mountPath"])
                   for m in node_box.get("volumeMounts", []))
    # The lifetime privacy ledger outlives the pod (the StatefulSet's own claim).
    assert config.privacy_ledger
    mount, volume = mount_for(hospital, app_box, config.privacy_ledger)
    assert volume.get("volumeClaimTemplate") and not mount.get("readOnly")


@pytest.mark.parametrize("path", HOSPITALS)
def test_hospital_network_policy_allows_only_the_superlink_and_dns(path: str) -> None:
    docs = rendered(path)
    hospital = workload(docs, "supernode")
    node = flower_args(docs, container(hospital, "supernode"))
    host, _, port = node.superlink.rpartition(":")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"
                and selects(d["spec"]["podSelector"]["matchLabels"], hospital)]
    assert len(policies) == 1, "the hospital pod needs exactly one NetworkPolicy"
    spec = policies[0]["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert not spec.get("ingress"), "nothing may connect to a hospital"
    dns, other = [], []
    for rule in spec["egress"]:
        assert rule.get("to") and rule.get("ports"), f"unrestricted egress rule {rule}"
        (dns if all(p["port"] == 53 for p in rule["ports"]) else other).append(rule)
    assert len(other) == 1, f"egress beyond the SuperLink: {other}"
    assert other[0]["ports"] == [{"protocol": "TCP", "port": int(port)}]
    for peer in other[0]["to"]:
        assert set(peer) == {"ipBlock"} and "except" not in peer["ipBlock"], peer
        network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        address = ip_address(host)  # for a name, the overlay gives the address it has
        assert address is None or address in network, f"{host} is not in {network}"
    assert len(dns) == 1
    assert {p["protocol"] for p in dns[0]["ports"]} <= {"UDP", "TCP"}
    assert all(set(peer) == {"namespaceSelector", "podSelector"} for peer in dns[0]["to"])


def test_example_overlay_instantiates_one_hospital() -> None:
    base, docs = rendered(HOSPITAL), rendered(EXAMPLE)
    namespaces = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    assert len(namespaces) == 1
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespaces[0], doc["metadata"]["name"]
            assert doc["metadata"]["name"].startswith(f"{namespaces[0]}-")
    cidr = [p["ipBlock"]["cidr"] for d in (base, docs) for n in d
            if n["kind"] == "NetworkPolicy" for p in n["spec"]["egress"][0]["to"]]
    assert cidr[0] != cidr[1], "the example does not set the SuperLink's address"


def test_operator_objects_share_one_namespace() -> None:
    docs = rendered(OPERATOR)
    namespace = named(docs, "Namespace", "fedapp")["metadata"]["name"]
    assert all(d["metadata"].get("namespace") == namespace for d in docs
               if d["kind"] != "Namespace")


def test_docs_create_every_secret_the_manifests_reference() -> None:
    """Each referenced Secret (and key) has its `kubectl create secret` in the docs."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "docs/deployment.md").read_text())
    commands = [line for line in text.splitlines() if "create secret" in line]
    wanted: dict[str, set[str]] = {}
    for path in (OPERATOR, HOSPITAL):
        for doc in rendered(path):
            if doc["kind"] not in WORKLOADS:
                continue
            for volume in pod(doc).get("volumes", []):
                for source in volume.get("projected", {}).get("sources", []):
                    if "secret" in source:
                        wanted.setdefault(source["secret"]["name"], set()).update(
                            i["key"] for i in source["secret"]["items"])
            for box in all_containers(doc):
                for var in box.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        wanted.setdefault(ref["name"], set()).add(ref["key"])
    assert wanted
    for name, keys in wanted.items():
        found = [c for c in commands if re.search(rf"create secret \w+ {re.escape(name)}\b", c)]
        assert found, f"docs/deployment.md never creates Secret {name}"
        tls = {"tls.crt", "tls.key"} if "create secret tls" in found[0] else set()
        missing = {k for k in keys - tls if not re.search(
            rf"--from-(file|literal)={re.escape(k)}=", found[0])}
        assert not missing, f"Secret {name}: the docs' command gives no {sorted(missing)}"
