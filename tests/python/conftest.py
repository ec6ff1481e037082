"""Session fixtures: the generated stubs, a focalserve process on a free port, a client."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "client" / "python"
sys.path.insert(0, str(CLIENT_DIR))

import build_stubs  # noqa: E402  (client/python/build_stubs.py)

build_stubs.ensure()  # generated, never committed: make them if missing or stale

import focalserve  # noqa: E402


def server_binary() -> Path:
    return Path(os.environ.get("FOCALSERVE_BINARY") or REPO / "build" / "server" / "focalserve")


class ServerProcess:
    """focalserve on 127.0.0.1:0; `target` is the address it printed."""

    def __init__(self, *extra_args: str, startup_timeout: float = 30.0):
        binary = server_binary()
        if not binary.exists():
            pytest.skip(f"focalserve binary not found at {binary}: build it (cmake -S . -B build -G Ninja && "
                        f"ninja -C build focalserve) or set FOCALSERVE_BINARY")
        args = [str(binary), "--listen", "127.0.0.1:0", "--metrics-listen", "", "--drain-grace", "0", "--drain-timeout", "5",
                *os.environ.get("FOCALSERVE_ARGS", "").split(), *extra_args]
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=startup_timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"focalserve printed nothing in {startup_timeout} s; stderr: {self.stderr_text()}")
        match = re.search(r"listening on (\S+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"unexpected first line from focalserve: {line!r}; stderr: {self.stderr_text()}")
        self.target = match.group(1)
        self.banner = line.strip()

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def make_test_certificate(folder: Path) -> "tuple[Path, Path]":
    """A self-signed certificate for 127.0.0.1 and localhost, valid one day: (cert, key)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="session")
def server():
    proc = ServerProcess()
    print(f"\n[focalserve] {proc.banner}")
    yield proc
    rc = proc.stop()
    assert rc == 0, f"focalserve exited {rc} on SIGTERM; stderr: {proc.stderr_text()}"


@pytest.fixture(scope="session")
def client(server):
    with focalserve.Client(server.target, timeout=30) as c:
        yield c
