"""setuptools glue: generates the focal.v1 stubs (build_stubs.py) before packaging them.

    /usr/bin/python3 -m pip install --no-deps --no-build-isolation client/python

The build reads ../../proto (the repository's proto/ folder; $FOCALSERVE_PROTO_ROOT
overrides), so build from a checkout. Metadata is in pyproject.toml.
"""
import os
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import build_stubs  # noqa: E402


class BuildPyWithStubs(build_py):
    """Regenerates the stubs so the wheel always matches the .proto it was built from."""

    def run(self):
        build_stubs.generate(quiet=True)
        super().run()


# Before setup(): package discovery must see focalserve._generated.* on a fresh checkout.
build_stubs.ensure()

setup(
    packages=find_packages(where=HERE, include=["focalserve", "focalserve.*"]),
    cmdclass={"build_py": BuildPyWithStubs},
)
