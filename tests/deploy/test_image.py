"""The image, run as a user runs it: published ports, health, answers bit-identical to the host
build, metrics, and `podman stop` (SIGTERM) under load losing no accepted call."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from support import (FOCALCTL, FOCALSERVE, GRPC_PORT, IMAGE, METRICS_PORT, REPO, Container, compute_calls_served,
                     deployment_args, fetch, find, load, load_result, podman, run)

# Ports published on loopback only, each on a free port of the host's choosing.
PUBLISH = ["-p", f"127.0.0.1::{GRPC_PORT}", "-p", f"127.0.0.1::{METRICS_PORT}"]


@pytest.fixture(scope="module")
def container():
    c = Container("focal-deploy-image", PUBLISH, ["--backend=cpu"])
    yield c
    c.remove()


@pytest.fixture(scope="module")
def host_server():
    """The host build's focalserve on loopback, the reference the image must agree with."""
    proc = subprocess.Popen([str(FOCALSERVE), "--listen=127.0.0.1:0", "--metrics-listen=", "--backend=cpu",
                             "--drain-grace=0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    assert match, f"focalserve printed {line!r}"
    yield match.group(1)
    proc.terminate()
    proc.wait(timeout=30)


def image_config() -> dict:
    return json.loads(podman("image", "inspect", IMAGE).stdout)[0]


def test_image_metadata():
    """Non-root user, the two ports, SIGTERM, an entrypoint listening on every interface."""
    config = image_config()["Config"]
    assert config["User"] == "10001:10001"
    assert set(config["ExposedPorts"]) == {f"{GRPC_PORT}/tcp", f"{METRICS_PORT}/tcp"}
    assert config["StopSignal"] == "SIGTERM"
    assert config["Entrypoint"][:3] == ["focalserve", f"--listen=0.0.0.0:{GRPC_PORT}",
                                        f"--metrics-listen=0.0.0.0:{METRICS_PORT}"]
    size = image_config()["Size"]
    print(f"\n[image] {IMAGE}: {size / 1e6:.1f} MB")


def test_runs_as_non_root_with_only_runtime_libraries(container):
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    # No compiler, no headers: the builder stage's packages stayed behind.
    assert podman("exec", container.name, "sh", "-c", "command -v c++ g++ cc cmake || true").stdout.strip() == ""
    assert podman("exec", container.name, "sh", "-c", "ls /usr/include/grpcpp 2>/dev/null || true").stdout.strip() == ""
    # Every library both binaries load is there (ldd prints "not found" otherwise).
    for binary in ("focalserve", "focalctl"):
        ldd = podman("exec", container.name, "ldd", f"/usr/local/bin/{binary}").stdout
        assert "not found" not in ldd, ldd


def test_health_serving(container):
    target = container.port(GRPC_PORT)
    assert run([FOCALCTL, f"--target={target}", "health"]).stdout.strip() == "SERVING"
    # The image's own HEALTHCHECK (what Docker and Podman run, and compose's healthcheck too).
    podman("healthcheck", "run", container.name)
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    assert compose["services"]["focalserve"]["healthcheck"]["test"] == \
        image_config()["Healthcheck"]["Test"]


def write_inputs(directory) -> dict:
    rng = np.random.default_rng(11)
    files = {}
    arrays = {
        "soft_logits": rng.normal(0, 4, size=(33, 17)).astype(np.float32),
        "soft_targets": rng.integers(0, 17, size=33).astype(np.int64),
        "sig_logits": rng.normal(0, 4, size=(16, 80)).astype(np.float32),
        "sig_targets": (rng.random((16, 80)) < 0.1).astype(np.float32),
    }
    for name, a in arrays.items():
        files[name] = os.path.join(directory, f"{name}.npy")
        np.save(files[name], a)
    return files


@pytest.mark.parametrize("case", [
    ["--variant", "softmax_focal", "--gamma", "2", "--label-smoothing", "0.1", "--reduction", "none",
     "--logits", "{soft_logits}", "--targets", "{soft_targets}"],
    ["--variant", "sigmoid_focal", "--gamma", "1.5", "--alpha", "0.25", "--reduction", "none",
     "--logits", "{sig_logits}", "--targets", "{sig_targets}"],
], ids=["softmax_focal", "sigmoid_focal"])
def test_focalctl_compute_matches_host_build_bit_for_bit(container, host_server, tmp_path, case):
    inputs = write_inputs(tmp_path)
    args = [a.format(**inputs) for a in case]
    outputs = {}
    for where, target in (("container", container.port(GRPC_PORT)), ("host", host_server)):
        grad, losses = tmp_path / f"{where}_grad.npy", tmp_path / f"{where}_losses.npy"
        printed = run([FOCALCTL, f"--target={target}", "compute", *args, "--grad-out", grad,
                       "--losses-out", losses]).stdout
        loss_line = [line for line in printed.splitlines() if line.split()[:1] == ["loss"]]
        outputs[where] = (loss_line, grad.read_bytes(), losses.read_bytes())
    assert outputs["container"][0] and outputs["container"][0] == outputs["host"][0]
    assert outputs["container"][1] == outputs["host"][1], "gradients differ"
    assert outputs["container"][2] == outputs["host"][2], "per-item losses differ"


def test_metrics_scraped(container):
    target = container.port(GRPC_PORT)
    before = compute_calls_served(fetch(f"http://{container.port(METRICS_PORT)}/metrics"))
    run([FOCALCTL, f"--target={target}", "bench", "--variant", "sigmoid_focal", "--duration", "1s",
         "--concurrency", "2", "--shape", "8,8"])
    text = fetch(f"http://{container.port(METRICS_PORT)}/metrics")
    assert compute_calls_served(text) > before
    assert "focal_request_latency_seconds_bucket" in text


def test_podman_stop_under_load_loses_no_accepted_call():
    """SIGTERM from `podman stop` while six clients call: every call started before the drain
    grace ran out is answered, later ones are refused — UNAVAILABLE from the draining server,
    or CANCELLED from gRPC for a call that reached it after its shutdown began (both clients
    retry both codes) — and the server reports every accepted call answered, exit code 0."""
    grace = 1
    c = Container("focal-deploy-drain", PUBLISH,
                  ["--backend=cpu", f"--drain-grace={grace}", "--drain-timeout=10", "--debug-delay-ms=20"])
    try:
        target = c.port(GRPC_PORT)
        # No retries: each call's own fate is what is counted.
        loader = load(target, seconds=4, workers=6, retry_attempts=1)
        time.sleep(1.5)
        signalled = time.time()
        stop = podman("stop", "-t", "30", c.name, timeout=60)
        stopped = time.time()
        result = load_result(loader)
        exit_code = c.exit_code()
        logs = c.logs()
    finally:
        c.remove()
    calls = result["calls"]

    def refused(start, code):
        return code in ("UNAVAILABLE", "CANCELLED") and start > signalled + grace - 0.1

    ok = sum(1 for _, _, code in calls if code == "OK")
    refusals = sum(1 for start, _, code in calls if refused(start, code))
    lost = [(start - signalled, code) for start, _, code in calls if code != "OK" and not refused(start, code)]
    print(f"\n[podman stop] {ok} answered, {refusals} refused after the grace, {len(lost)} lost; "
          f"stop took {stopped - signalled:.2f} s, exit code {exit_code}")
    assert stop.returncode == 0
    assert ok > 50
    assert lost == [], f"calls lost (start relative to the signal, code): {lost[:10]}; {result['first_errors']}"
    assert result["distinct_answers"] == 1
    assert exit_code == 0, logs[-3000:]
    assert "every accepted call was answered" in logs


def make_tls_secret(directory: Path) -> Path:
    """What the Secret focalserve-tls holds (tls.crt, tls.key, ca.crt), made with openssl: a CA
    and a server certificate naming "focalserve" (the probes check that name) and 127.0.0.1."""
    d = directory / "tls"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "2",
         "-subj", "/CN=FocalServe deploy test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "req", *ec, "-keyout", d / "tls.key", "-out", d / "tls.csr", "-subj", "/CN=focalserve"])
    (d / "tls.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                               "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:focalserve,IP:127.0.0.1\n")
    run(["openssl", "x509", "-req", "-in", d / "tls.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
         "-set_serial", "2", "-days", "2", "-out", d / "tls.crt", "-extfile", d / "tls.ext"])
    for f in ("ca.key", "tls.csr", "tls.ext"):
        (d / f).unlink()
    for f in d.iterdir():
        f.chmod(0o444)
    return d


def test_pod_of_the_tls_and_token_components(tmp_path):
    """The cpu overlay with components/tls and components/token, run as the kubelet would run
    the pod: its args, the Secrets mounted where its volumeMounts say, the pod's user, a
    read-only root filesystem with nothing writable (no tmpfs either), every capability
    dropped, no privilege escalation. Its exec probes pass inside the container, a call with
    the token over TLS is answered, one without the token is refused."""
    from test_manifests import render  # the same rendering the manifest tests check

    docs = render("cpu+tls+token")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    tls = make_tls_secret(tmp_path)
    token_dir = tmp_path / "token"
    token_dir.mkdir()
    (token_dir / "token").write_text("deploy-test-token-5f2c\n")
    (token_dir / "token").chmod(0o444)
    sources = {"tls": tls, "token": token_dir}
    mounts = []
    for m in container["volumeMounts"]:
        mounts += ["-v", f"{sources[m['name']]}:{m['mountPath']}:ro"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    c = Container("focal-deploy-pod", [*PUBLISH, *mounts, "--user", user, "--read-only", "--read-only-tmpfs=false",
                                       "--cap-drop=all", "--security-opt=no-new-privileges"],
                  deployment_args(docs))
    try:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            out = podman("exec", c.name, *container[probe]["exec"]["command"])
            assert out.stdout.strip() == "SERVING"
        target = c.port(GRPC_PORT)
        secure = [f"--target={target}", f"--tls-ca={tls / 'ca.crt'}", "--tls-server-name=focalserve"]
        call = ["info"]
        run([FOCALCTL, *secure, f"--token-file={token_dir / 'token'}", *call])
        refused = run([FOCALCTL, *secure, *call], check=False)
        assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stdout + refused.stderr
        assert "| tls on |" in c.logs() and "| auth bearer token" in c.logs()
    finally:
        c.remove()
