"""The Kubernetes manifests in deploy/k8s/, rendered offline with ``kubectl kustomize``
(kustomize v5; cached per kustomization), and the lookups the k8s tests make in them:
workloads, containers, Services and their ports, a container's environment and its
``$(VAR)``-expanded arguments parsed by its Flower executable's own parser, the volume,
Secret or ConfigMap behind a file, probes, images, and the docker/ compose services the
manifests are compared with."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.unit.flower_executables import dockerfile_entrypoint, flower_parsers

REPO = Path(__file__).resolve().parents[2]
OPERATOR = "deploy/k8s/operator"
HOSPITAL = "deploy/k8s/hospital/base"
EXAMPLE = "deploy/k8s/hospital/example"
KUSTOMIZATIONS = (OPERATOR, HOSPITAL, EXAMPLE)
HOSPITALS = (HOSPITAL, EXAMPLE)
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl")
WORKLOADS = ("Deployment", "StatefulSet")

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
