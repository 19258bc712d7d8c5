"""Conventions the Kubernetes manifests in deploy/k8s/ keep beyond their wiring, checked
offline on the kustomizations rendered with ``kubectl kustomize`` (``k8s_render.py``; the
wiring itself is checked in ``test_k8s_manifests.py``): every container has CPU and memory
requests and limits; the kubelet's tcpSocket/httpGet probes target only ports bound on the
pod address (the SuperNode binds 127.0.0.1 only: an exec probe checks it from inside); the
operator's objects share one namespace and the example overlay puts one hospital in a
namespace of its own, with its own SuperLink address; and docs/deployment.md creates every
Secret (and key) the manifests reference.
"""

from __future__ import annotations

import re

import pytest

from tests.unit.k8s_render import (
    EXAMPLE,
    HOSPITAL,
    KUBECTL,
    KUSTOMIZATIONS,
    OPERATOR,
    REPO,
    WORKLOADS,
    all_containers,
    container_port,
    flower_args,
    named,
    pod,
    probes,
    rendered,
)

pytestmark = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not on PATH (or KUBECTL): it renders the kustomizations offline",
)


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
