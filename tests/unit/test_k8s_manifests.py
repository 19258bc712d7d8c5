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
dashboards), so it renders only where those files exist. Rendering and lookups: ``k8s_render.py``;
resources, probes, namespaces and the docs' Secrets: ``test_k8s_conventions.py``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
from pathlib import PurePosixPath

import flwr
import pytest
import yaml

from fedapp.config.node import NodeConfig
from tests.unit.k8s_render import (
    HOSPITALS,
    KUBECTL,
    KUSTOMIZATIONS,
    OPERATOR,
    REPO,
    WORKLOADS,
    all_containers,
    args_of,
    compose,
    compose_command,
    config_file,
    config_map_at,
    container,
    container_port,
    env_of,
    flower_args,
    images,
    ip_address,
    mount_for,
    named,
    pod,
    rendered,
    secret_file,
    selects,
    service_port,
    workload,
)

K8S_VERSION = "1.30"
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not on PATH (or KUBECTL): it renders the kustomizations offline",
)


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
