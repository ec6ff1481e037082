"""The deploy tests (tests/deploy/run.sh builds the image first): Podman as root, the image,
the host build's binaries for comparison, the Python client's stubs."""
from __future__ import annotations

import os
import sys

import pytest

from support import IMAGE, FOCALCTL, FOCALSERVE, REPO, podman

sys.path.insert(0, str(REPO / "client" / "python"))
import build_stubs  # noqa: E402

build_stubs.ensure()


def pytest_sessionstart(session):
    problems = []
    if os.geteuid() != 0:
        problems.append("they run as root (Podman with runc, network namespaces): run tests/deploy/run.sh as root")
    for binary in (FOCALCTL, FOCALSERVE):
        if not binary.exists():
            problems.append(f"the host build's {binary} is missing (make build)")
    if not problems and podman("image", "exists", IMAGE, check=False).returncode != 0:
        problems.append(f"image {IMAGE} is missing: tests/deploy/run.sh builds it")
    if problems:
        pytest.exit("deploy tests cannot run: " + "; ".join(problems), returncode=1)
