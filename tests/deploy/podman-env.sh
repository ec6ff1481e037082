# Sourced by the deploy scripts: Podman reads tests/deploy/containers.conf and nothing else.
export CONTAINERS_CONF
CONTAINERS_CONF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/containers.conf"
