"""`kubectl apply -k deploy/` stays the install: the kustomization renders with kubectl."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from kuberde.testing.cluster import kubectl_path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_kubectl_kustomize_renders_the_install() -> None:
    kubectl = kubectl_path()
    if kubectl is None:
        pytest.skip("kubectl is not installed (scripts/system-deps.sh --tests installs it)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    documents = [document for document in yaml.safe_load_all(rendered) if document]
    kinds = {(document["kind"], document["metadata"]["name"]) for document in documents}
    assert {
        ("Namespace", "kuberde"),
        ("CustomResourceDefinition", "rdeagents.kuberde.io"),
        ("Deployment", "kuberde-operator"),
        ("Deployment", "frp-server"),
        ("Service", "frp-server"),
    } <= kinds
    images = {
        container["image"]
        for document in documents
        if document["kind"] == "Deployment"
        for container in document["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"soloking/kuberde-operator:v2.1"}
