"""Three replicas of the image behind one DNS name, the way a headless Service puts them.

Each replica is a container in a network namespace of its own with its own address; the clients
run in a fourth namespace whose resolver (dnsmasq, named by that namespace's resolv.conf)
answers `focal.test` with the three addresses, as cluster DNS answers for a headless Service.
The replicas run with the flags the rendered cpu overlay gives its pods. The C++ client
(focalctl) and the Python client connect with dns:///focal.test:50051 and balance with
round_robin; a replica stopped mid-run with SIGTERM, and one killed with SIGKILL, must cost no
call (the clients' retry policy sends a refused or broken call to another replica).

Every address is inside these namespaces: nothing leaves the machine.
"""
from __future__ import annotations

import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support import (FOCALCTL, GRPC_PORT, METRICS_PORT, REPO, Container, compute_calls_served, deployment_args,
                     fetch, flag_value, kustomize, load, load_result, podman, run)

REPLICAS = 3
SUBNET = "10.203.0"  # the project's own test hosts, in the namespaces this test makes
CLIENT_NS = "focal-clients"
NAME = "focal.test"
TARGET = f"dns:///{NAME}:{GRPC_PORT}"


def replica_ns(i: int) -> str:
    return f"focal-replica{i}"


def replica_address(i: int) -> str:
    return f"{SUBNET}.{11 + i}"


def ip(*args: str, check: bool = True):
    return run(["ip", *args], check=check)


def remove_namespaces():
    for ns in [CLIENT_NS] + [replica_ns(i) for i in range(REPLICAS)]:
        ip("netns", "del", ns, check=False)


class Replicas:
    """The namespaces, the resolver and the three containers."""

    def __init__(self, server_args: list[str]):
        self.server_args = server_args
        self.containers: list[Container] = [None] * REPLICAS
        self.dns = None
        remove_namespaces()
        # The clients' namespace holds a bridge, each replica's namespace a veth on it.
        ip("netns", "add", CLIENT_NS)
        ip("-n", CLIENT_NS, "link", "set", "lo", "up")
        ip("-n", CLIENT_NS, "link", "add", "br0", "type", "bridge")
        ip("-n", CLIENT_NS, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        ip("-n", CLIENT_NS, "link", "set", "br0", "up")
        for i in range(REPLICAS):
            ns = replica_ns(i)
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "add", f"fveth{i}", "netns", CLIENT_NS, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", CLIENT_NS, "link", "set", f"fveth{i}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{replica_address(i)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        # `ip netns exec` mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf.
        self.etc = Path("/etc/netns") / CLIENT_NS
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n")
        self.hosts = tempfile.NamedTemporaryFile("w", suffix=".hosts", delete=False)
        self.hosts.close()
        self.publish(range(REPLICAS))
        Path(self.hosts.name).chmod(0o644)
        self.dns_log = tempfile.NamedTemporaryFile(suffix=".dnsmasq.log", delete=False).name
        self.dns = subprocess.Popen(
            ["ip", "netns", "exec", CLIENT_NS, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
             "--no-poll", "--listen-address=127.0.0.1", "--bind-interfaces", "--port=53", "--pid-file=",
             f"--addn-hosts={self.hosts.name}", "--local=/test/", "--local-ttl=1", f"--log-facility={self.dns_log}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(REPLICAS):
            self.start(i)

    def publish(self, replicas):
        """Makes the name resolve to `replicas`' addresses (as endpoints change for a headless
        Service); dnsmasq reads its hosts file again on SIGHUP."""
        Path(self.hosts.name).write_text("".join(f"{replica_address(i)} {NAME}\n" for i in replicas))
        if self.dns is not None:
            self.dns.send_signal(signal.SIGHUP)
            time.sleep(0.2)

    def start(self, i: int, extra_args=()):
        if self.containers[i] is not None:
            self.containers[i].remove()
        self.containers[i] = Container(f"focal-replica{i}", ["--network", f"ns:/run/netns/{replica_ns(i)}"],
                                       [*self.server_args, *extra_args])
        deadline = time.monotonic() + 20
        while run([FOCALCTL, f"--target={replica_address(i)}:{GRPC_PORT}", "--timeout=2s", "health"],
                  netns=CLIENT_NS, check=False).returncode != 0:
            assert time.monotonic() < deadline, f"replica {i} not SERVING:\n{self.containers[i].logs()[-2000:]}"
            time.sleep(0.2)

    def served(self, replicas=range(REPLICAS)) -> list[float]:
        """Compute calls each of `replicas` answered OK so far, from its /metrics."""
        return [compute_calls_served(fetch(f"http://{replica_address(i)}:{METRICS_PORT}/metrics", netns=CLIENT_NS))
                for i in replicas]

    def close(self):
        for c in self.containers:
            if c is not None:
                c.remove()
        if self.dns is not None:
            self.dns.terminate()
            self.dns.wait(timeout=10)
        remove_namespaces()
        for f in (self.etc / "resolv.conf",):
            f.unlink(missing_ok=True)
        self.etc.rmdir()
        Path(self.hosts.name).unlink(missing_ok=True)
        Path(self.dns_log).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def cpu_overlay_args() -> list[str]:
    return deployment_args(kustomize(REPO / "deploy" / "k8s" / "overlays" / "cpu"))


@pytest.fixture(scope="module")
def replicas(cpu_overlay_args):
    # The pods' flags, and 20 ms per computation so that calls are in flight when a replica
    # goes. The drain keeps the manifest's timeout; its grace is cut to 1 s to keep the test short.
    r = Replicas(cpu_overlay_args + ["--drain-grace=1", "--debug-delay-ms=20"])
    yield r
    r.close()


def cpp_load(seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", CLIENT_NS, str(FOCALCTL), f"--target={TARGET}", "--timeout=20s", "bench",
         "--variant", "sigmoid_focal", "--gamma", "2", "--shape", "64,80", "--gradient", "--concurrency", "4",
         "--duration", f"{seconds}s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cpp_result(proc: subprocess.Popen) -> dict:
    """focalctl bench's status code counts (it exits 1 when any call failed)."""
    out, err = proc.communicate(timeout=120)
    codes = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s*\[(\w+)\]\t(\d+) responses$", out, re.M)}
    return {"codes": codes, "exit": proc.returncode, "output": out + err}


def python_result(proc: subprocess.Popen) -> dict:
    result = load_result(proc)
    codes: dict = {}
    for _, _, code in result["calls"]:
        codes[code] = codes.get(code, 0) + 1
    return {"codes": codes, "exit": 0 if set(codes) == {"OK"} else 1, "output": str(result["first_errors"]),
            "distinct_answers": result["distinct_answers"]}


CLIENTS = {
    "cpp": (cpp_load, cpp_result),
    "python": (lambda seconds: load(TARGET, seconds=seconds, workers=4, netns=CLIENT_NS), python_result),
}


def test_the_name_resolves_to_every_replica(replicas):
    answer = run(["getent", "ahostsv4", NAME], netns=CLIENT_NS).stdout
    assert {line.split()[0] for line in answer.splitlines()} == {replica_address(i) for i in range(REPLICAS)}


def test_replicas_run_the_overlay_flags(replicas, cpu_overlay_args):
    """The flags the cpu overlay gives its pods are accepted and in force."""
    assert flag_value(cpu_overlay_args, "max-connection-age") not in (None, "0")
    banner = replicas.containers[0].wait_for_line("listening on")
    assert "backend cpu" in banner


@pytest.mark.parametrize("client", CLIENTS)
def test_round_robin_spreads_calls_over_every_replica(replicas, client):
    start, result = CLIENTS[client]
    before = replicas.served()
    outcome = result(start(3))
    after = replicas.served()
    per_replica = [a - b for a, b in zip(after, before)]
    total = sum(per_replica)
    print(f"\n[{client} client, dns:/// round_robin] calls per replica: {per_replica} of {total}; "
          f"codes {outcome['codes']}")
    assert outcome["exit"] == 0, outcome["output"][-3000:]
    assert total == outcome["codes"].get("OK", 0)
    for i, n in enumerate(per_replica):
        assert n >= total / REPLICAS * 0.6, f"replica {i} got {n} of {total} calls: round_robin is not in effect"


@pytest.mark.parametrize("signal", ["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("client", CLIENTS)
def test_a_replica_stopped_mid_run_costs_no_call(replicas, client, signal):
    start, result = CLIENTS[client]
    victim = 1
    others = [i for i in range(REPLICAS) if i != victim]
    before = replicas.served(others)
    proc = start(5)
    time.sleep(1.5)
    name = replicas.containers[victim].name
    if signal == "SIGTERM":
        podman("stop", "-t", "60", name, timeout=90)
    else:
        podman("kill", "--signal", "KILL", name)
    outcome = result(proc)
    exit_code = replicas.containers[victim].exit_code()
    logs = replicas.containers[victim].logs()
    served = [a - b for a, b in zip(replicas.served(others), before)]
    print(f"\n[{client} client, replica {victim} {signal} mid-run] codes {outcome['codes']}; "
          f"calls the other replicas answered: {served}; replica exit code {exit_code}")
    replicas.start(victim)
    assert set(outcome["codes"]) == {"OK"}, outcome["output"][-3000:]
    assert outcome["exit"] == 0
    if signal == "SIGTERM":
        assert exit_code == 0, logs[-3000:]
        assert "every accepted call was answered" in logs
    else:
        assert exit_code == 137


@pytest.mark.parametrize("max_connection_age", [2, 0])
def test_a_replica_added_gets_traffic_once_connections_age(replicas, max_connection_age):
    """The name starts with two replicas; a third is added to it (as a scale-up adds an endpoint)
    while the Python client calls. With --max-connection-age the client's connections close
    after it, the client resolves the name again and the third replica gets calls; without it
    (0) the client never looks again and the third gets none, which is why the manifests set
    it. The client re-resolves at most once a second here (gRPC's default: once in 30 s)."""
    newcomer = REPLICAS - 1
    age = [f"--max-connection-age={max_connection_age}", "--max-connection-age-grace=2"]
    try:
        for i in range(REPLICAS):
            replicas.start(i, age)
        replicas.publish(range(newcomer))
        before = replicas.served([newcomer])[0]
        proc = load(TARGET, seconds=9, workers=4, netns=CLIENT_NS, extra=["--dns-min-resolution-ms", "1000"])
        time.sleep(2)
        replicas.publish(range(REPLICAS))
        outcome = python_result(proc)
        got = replicas.served([newcomer])[0] - before
        print(f"\n[--max-connection-age={max_connection_age}] the added replica answered {got:.0f} of "
              f"{sum(outcome['codes'].values())} calls; codes {outcome['codes']}")
        assert set(outcome["codes"]) == {"OK"}, outcome["output"]
        if max_connection_age > 0:
            assert got > 0.1 * outcome["codes"]["OK"], "the added replica got too few calls"
        else:
            assert got == 0
    finally:
        replicas.publish(range(REPLICAS))
        for i in range(REPLICAS):
            replicas.start(i)
