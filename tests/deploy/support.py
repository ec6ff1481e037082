"""What the deploy tests share: Podman, containers, network namespaces, metrics, the manifests."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PYTHON = "/usr/bin/python3"
# tests/deploy/run.sh builds it; the name the compose file and the Kustomize base use.
IMAGE = os.environ.get("FOCAL_IMAGE", "localhost/focalserve:latest")
FOCALCTL = Path(os.environ.get("FOCALCTL_BINARY") or REPO / "build" / "client" / "cpp" / "focalctl")
FOCALSERVE = Path(os.environ.get("FOCALSERVE_BINARY") or REPO / "build" / "server" / "focalserve")
GRPC_PORT, METRICS_PORT = 50051, 9464  # what the image's entrypoint listens on
ENV = dict(os.environ, CONTAINERS_CONF=str(HERE / "containers.conf"))


def run(args: Iterable[str], *, timeout: float = 120, check: bool = True, netns: Optional[str] = None,
        **kwargs) -> subprocess.CompletedProcess:
    """Runs a command (in network namespace `netns` when given) and returns what it printed."""
    args = [str(a) for a in args]
    if netns:
        args = ["ip", "netns", "exec", netns, *args]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout[-3000:]}\n"
                             f"stderr: {proc.stderr[-3000:]}")
    return proc


def podman(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run(["podman", *args], **kwargs)


class Container:
    """A container of the image, started detached; `remove()` takes it away whatever its state."""

    def __init__(self, name: str, network: list[str], server_args: Iterable[str] = ()):
        self.name = name
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("run", "-d", "--name", name, *network, IMAGE, *server_args)
        self.wait_for_line("listening on")

    def logs(self) -> str:
        p = podman("logs", self.name, check=False)
        return p.stdout + p.stderr

    def wait_for_line(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.logs()
            if text in logs:
                return logs
            if self.state() == "exited":
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no '{text}' in its log within {timeout} s:\n{self.logs()[-3000:]}")

    def state(self) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()

    def exit_code(self) -> int:
        return int(podman("wait", self.name, timeout=120).stdout.strip())

    def port(self, container_port: int) -> str:
        """host:port a published container port is reachable at."""
        return podman("port", self.name, f"{container_port}/tcp").stdout.strip().splitlines()[0]

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


def metric_sum(text: str, name: str, labels: Iterable[str] = ()) -> float:
    """Sum of the samples of metric `name` whose label set contains every `labels` item."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(label in head for label in labels):
            total += float(value)
    return total


def compute_calls_served(metrics_text: str) -> float:
    return metric_sum(metrics_text, "focal_requests_total", ['method="Compute"', 'code="OK"'])


def load(target: str, *, seconds: float, workers: int, netns: Optional[str] = None,
         retry_attempts: int = 4, extra: Iterable[str] = ()) -> subprocess.Popen:
    """tests/deploy/load.py in the background: the Python client calling Compute back to back."""
    args = [PYTHON, HERE / "load.py", "compute", "--target", target, "--seconds", seconds,
            "--workers", workers, "--retry-attempts", retry_attempts, *extra]
    args = [str(a) for a in args]
    if netns:
        args = ["ip", "netns", "exec", netns, *args]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def load_result(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"load.py exited {proc.returncode}: {err[-3000:]}")
    return json.loads(out)


def fetch(url: str, netns: Optional[str] = None) -> str:
    """GET `url` (from inside `netns` when given) with Python's urllib."""
    code = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    return run([PYTHON, "-c", code, url], netns=netns).stdout


# -- the manifests ------------------------------------------------------------------------------

def kustomize(directory: Path) -> list[dict]:
    """The documents `kubectl kustomize` renders from `directory`. The manifests use `patches`
    and `components`, which need kustomize v4 or newer (kubectl 1.21+); Debian's
    kubernetes-client 1.20 carries v2, so an older one is named rather than misread."""
    version = run(["kubectl", "version", "--client"], check=False).stdout
    match = re.search(r"Kustomize Version: v(\d+)", version)
    assert match and int(match.group(1)) >= 4, f"kubectl's kustomize is too old (need v4+): {version.strip()}"
    text = run(["kubectl", "kustomize", directory]).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict], kind: str, name: Optional[str] = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''} in the rendered manifests"
    return matches[0]


def deployment_args(docs: list[dict]) -> list[str]:
    """The Deployment's server flags as the kubelet passes them: $(VAR) replaced from env, where
    a resourceFieldRef on limits.cpu gives the limit in whole cores (rounded up, divisor 1)."""
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    values = {}
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("resourceFieldRef")
        if ref and ref["resource"] == "limits.cpu":
            cpu = str(container["resources"]["limits"]["cpu"])
            values[e["name"]] = str(-(-int(cpu[:-1]) // 1000) if cpu.endswith("m") else int(float(cpu) + 0.999))
        elif "value" in e:
            values[e["name"]] = e["value"]
    return [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in container.get("args", [])]


def flag_value(args: list[str], flag: str) -> Optional[str]:
    """The value of --flag in `args` (the last one counts, as in focalserve)."""
    value = None
    for a in args:
        if a.startswith(f"--{flag}="):
            value = a.split("=", 1)[1]
    return value
