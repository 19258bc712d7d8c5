"""One Flower release for every container: ``FLWR_VERSION`` sets them all, and the docs'
examples name the release the project is tested with (the installed flwr)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import flwr
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = shutil.which("docker-compose")
COMPOSE_ENV = {"SUPERLINK_ADDRESS": "superlink.example.org:9093", "CA_CERT": "/etc/ca.crt",
                "NODE_KEY": "/etc/hospital-a", "HOSPITAL_DATA": "/srv/fedapp-data",
                "GRAFANA_ADMIN_PASSWORD": "test-only-password"}


@pytest.mark.skipif(COMPOSE is None, reason="docker-compose (v1) is not on PATH")
@pytest.mark.parametrize("name", ["compose.yml", "compose.tls.yml", "compose.hospital.yml"])
def test_flwr_version_sets_every_flower_container(name: str) -> None:
    """No Flower tag is pinned per service: FLWR_VERSION moves all images and builds."""
    assert COMPOSE is not None
    env = {**os.environ, **COMPOSE_ENV, "FLWR_VERSION": "9.8.7"}
    result = subprocess.run([COMPOSE, "-f", str(DOCKER / name), "config"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    versions = {}
    for service_name, service in services.items():
        image = str(service.get("image", ""))
        if image.startswith("flwr/"):
            versions[service_name] = image.rsplit(":", 1)[1]
        if "build" in service:
            versions[service_name] = service["build"]["args"]["FLWR_VERSION"]
    assert versions and set(versions.values()) == {"9.8.7"}, versions


@pytest.mark.parametrize("doc", ["docker/README.md", "README.md", "docs/deployment.md"])
def test_docs_name_the_tested_flower_release(doc: str) -> None:
    """Exact flwr versions in install and image examples equal the installed flwr."""
    text = (REPO / doc).read_text()
    pins = re.findall(r"(?:flwr==|flwr/(?:superexec|superlink|supernode):|FLWR_VERSION=)"
                      r"(\d+\.\d+\.\d+)", text)
    assert all(pin == flwr.__version__ for pin in pins), (doc, pins, flwr.__version__)
