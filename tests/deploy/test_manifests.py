"""The Kubernetes manifests and the compose file: rendered by `kubectl kustomize`, validated
against the published schemas (tests/deploy/validate, offline), and held to what the server and
the image do. No cluster exists on these machines; test_image.py and test_replicas.py run the
image with these flags, probes' health service, ports and drain."""
from __future__ import annotations

import copy
import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml

from support import FOCALSERVE, GRPC_PORT, HERE, METRICS_PORT, REPO, deployment_args, find, flag_value, kustomize, run

K8S = REPO / "deploy" / "k8s"
VALIDATOR = HERE / "validate"
OVERLAYS = ["cpu", "gpu", "cpu+tls+token"]


def render(overlay: str) -> list[dict]:
    """An overlay's documents; "a+b+c" is overlay a with components b and c, as a user writes it."""
    name, *components = overlay.split("+")
    if not components:
        return kustomize(K8S / "overlays" / name)
    with tempfile.TemporaryDirectory() as d:
        rel = os.path.relpath(K8S, d)  # kustomize takes relative paths only
        Path(d, "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [f"{rel}/overlays/{name}"], "components": [f"{rel}/components/{c}" for c in components]}))
        return kustomize(Path(d))


def validate(docs: list[dict], mode: str = "kubernetes"):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        if mode == "kubernetes":
            yaml.safe_dump_all(docs, f)
        else:
            yaml.safe_dump(docs, f)
        f.flush()
        return run(["node", VALIDATOR / "validate.mjs", mode, f.name], check=False)


def server_flags() -> set[str]:
    return set(re.findall(r"^  --([a-z0-9-]+)$", run([FOCALSERVE, "--help"], check=False).stdout, re.M))


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(request.param)


def test_valid_against_the_kubernetes_schemas(overlay):
    name, docs = overlay
    result = validate(docs)
    print(f"\n[{name}] {result.stdout.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Service",
                     "ServiceMonitor"]


def test_the_validator_refuses_a_broken_manifest(overlay):
    """The check can fail: a probe port as text and a missing container image are refused."""
    _, docs = overlay
    broken = copy.deepcopy(docs)
    container = find(broken, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"] = {"grpc": {"port": "grpc"}}
    result = validate(broken)
    assert result.returncode != 0 and "grpc/port must be integer" in result.stdout, result.stdout


def test_deployment_matches_the_server(overlay):
    name, docs = overlay
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = deployment_args(docs)
    # Every flag is one focalserve has.
    unknown = {a[2:].split("=")[0] for a in args} - server_flags()
    assert not unknown, f"flags focalserve does not have: {unknown}"
    # SIGKILL comes after the whole drain (grace, then accepted calls' timeout), with room to exit.
    grace, timeout = int(flag_value(args, "drain-grace")), int(flag_value(args, "drain-timeout"))
    assert pod["terminationGracePeriodSeconds"] >= grace + timeout + 5
    # New replicas get traffic: connections age out.
    assert int(flag_value(args, "max-connection-age")) > 0
    # The ports are the entrypoint's, and the probes ask its gRPC health.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    tls = flag_value(args, "tls-cert") is not None
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        if tls:  # the kubelet's gRPC probes cannot speak TLS
            command = spec["exec"]["command"]
            assert command[0] == "focalctl" and command[-1] == "health" and "--tls-ca=/etc/focalserve/tls/ca.crt" in command
        else:
            assert spec["grpc"] == {"port": GRPC_PORT}
    # A draining replica is not restarted: liveness tolerates longer than the whole drain.
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > pod["terminationGracePeriodSeconds"]
    # Out of the endpoints within the drain grace: readiness fails within it.
    ready = container["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] <= grace
    # Non-root, read-only, no privilege escalation (the image's user).
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    limits = container["resources"]["limits"]
    assert "cpu" in container["resources"]["requests"]  # the HPA's CPU utilisation needs it
    if name == "gpu":
        assert limits["nvidia.com/gpu"] == 1 and flag_value(args, "backend") == "cuda"
    else:
        assert "nvidia.com/gpu" not in limits and flag_value(args, "backend") == "cpu"
    # Secrets mounted where the flags read them.
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    for flag, volume in (("tls-cert", "tls"), ("tls-key", "tls"), ("auth-token-file", "token")):
        path = flag_value(args, flag)
        if path is not None:
            assert path.startswith(mounts[volume] + "/")
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", [])}
    assert set(secrets) == set(mounts)


def test_services_pdb_hpa_and_monitor(overlay):
    _, docs = overlay
    labels = find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    headless = find(docs, "Service", "focalserve-headless")["spec"]
    assert headless["clusterIP"] == "None"  # DNS answers every ready pod's address
    assert [p["port"] for p in headless["ports"]] == [GRPC_PORT]
    cluster = find(docs, "Service", "focalserve")["spec"]
    assert cluster["type"] == "ClusterIP" and {p["name"] for p in cluster["ports"]} == {"grpc", "metrics"}
    for service in (headless, cluster):
        assert service["selector"].items() <= labels.items()
    assert find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "focalserve"
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    monitor = find(docs, "ServiceMonitor")["spec"]
    assert monitor["endpoints"][0]["port"] == "metrics" and monitor["endpoints"][0]["path"] == "/metrics"


def test_compose_file():
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    result = validate(compose, mode="compose")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = copy.deepcopy(compose)
    broken["services"]["focalserve"]["stop_grace_periode"] = "45s"
    assert validate(broken, mode="compose").returncode != 0
    for name, service in compose["services"].items():
        args = service["command"]
        assert not {a[2:].split("=")[0] for a in args} - server_flags()
        grace, timeout = int(flag_value(args, "drain-grace")), int(flag_value(args, "drain-timeout"))
        assert int(service["stop_grace_period"].rstrip("s")) >= grace + timeout + 5
    gpu = compose["services"]["focalserve-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert flag_value(gpu["command"], "backend") == "cuda"
    assert flag_value(compose["services"]["focalserve"]["command"], "backend") == "cpu"
