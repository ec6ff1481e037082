#!/usr/bin/env bash
# Makes the image `debian:bookworm-slim` in local Podman storage when it is not there yet: no
# registry is reachable from these machines, so the Containerfile's base comes from
# `debootstrap --variant=minbase bookworm`, slimmed the way the official -slim image is (no
# documentation, man pages or locales; apt's caches emptied) and imported under the name the
# Containerfile's FROM resolves to. Podman's storage keeps it, so this runs once per machine.
# Usage: tests/deploy/base-image.sh   (root; podman and debootstrap from scripts/install-deps.sh)
set -euo pipefail
source "$(dirname "$0")/podman-env.sh"

readonly image=docker.io/library/debian:bookworm-slim
if podman image exists "$image"; then exit 0; fi

# The same archive and suites the host's apt uses (bookworm, -updates, -security).
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /var/tmp/focal-bookworm.XXXXXX)
trap 'rm -rf "$root"' EXIT
start=$(date +%s)
echo "base-image: debootstrap --variant=minbase bookworm from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
rm -f "$root.log"

if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/debian.sources"
  rm -f "$root/etc/apt/sources.list"
fi
# What the official -slim image leaves out, for packages installed later too.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,info,groff,lintian,linda}/* "$root"/var/cache/apt/archives/*.deb \
       "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/tmp/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

tar --numeric-owner -C "$root" -c . |
  podman import --quiet --change 'CMD ["bash"]' - "$image" >/dev/null
echo "base-image: $image made in $(( $(date +%s) - start )) s ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
