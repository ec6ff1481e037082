#!/usr/bin/env bash
# Runs the Python client's tests (tests/python) against a real focalserve.
#
#   scripts/python-tests.sh [pytest args...]
#
# Uses Debian's /usr/bin/python3 (grpcio, numpy, torch, torchvision, pytest); the python3
# first on the PATH lacks them. Generates the stubs into client/python/focalserve/_generated/
# when they are missing or older than the .proto. The server is $FOCALSERVE_BINARY, else
# build/server/focalserve; without it the tests skip and say why (-rs lists the reasons).
# Exit status: pytest's, except that "no tests collected" (5) is a failure here too.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=/usr/bin/python3

"$PY" client/python/build_stubs.py --if-stale

binary="${FOCALSERVE_BINARY:-build/server/focalserve}"
if [[ ! -x "$binary" ]]; then
  echo "python-tests: no focalserve at $binary; tests that need the server will skip" >&2
fi

set +e
"$PY" -m pytest -q -rs tests/python "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "python-tests: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit $rc
