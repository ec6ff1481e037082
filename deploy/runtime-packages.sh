#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries the given binaries load, one per
# line: the image's runtime stage installs exactly these (deploy/Containerfile).
set -euo pipefail
for binary in "$@"; do
  ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3}'
done | sort -u | while read -r lib; do
  # With the merged /usr a library may be listed by dpkg under /lib or /usr/lib.
  real=$(readlink -f "$lib")
  for path in "$lib" "$real" "/usr${lib#/usr}" "${lib#/usr}" "/usr${real#/usr}" "${real#/usr}"; do
    if owner=$(dpkg-query -S "$path" 2>/dev/null); then
      echo "${owner%%:*}"
      continue 2
    fi
  done
  echo "runtime-packages: no package holds $lib" >&2
  exit 1
done | sort -u
