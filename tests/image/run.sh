#!/usr/bin/env bash
# The container image end to end, with no container daemon: deploy/image/build.py builds it (an
# OCI layout), skopeo pushes it to Debian's docker-registry listening on loopback, pulls it back
# by the digest build.py printed, umoci unpacks it, and the binary runs from the unpacked rootfs
# (chrooted into it when root, so nothing of the host is used). Checks the image's user, entry
# point, CA bundle and SBOM, that it has no shell, and prints its compressed size.
#
# Needs: python3, cargo, docker-registry, skopeo, umoci (Debian packages), curl.
# Usage: tests/image/run.sh   (extra arguments go to build.py, e.g. --binary amd64=PATH)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d)"
registry_pid=""
cleanup() {
    if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "tests/image: FAILED: $*" >&2; exit 1; }

# 1. Build (the static binary + the layout).
line="$(python3 "$repo/deploy/image/build.py" --platform linux/amd64 --layout "$work/oci" --tag ci "$@" | tail -n1)"
digest="${line##*digest=}"
[[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || fail "build.py printed no digest: $line"

# Reproducible: the same inputs give the same digest.
again="$(python3 "$repo/deploy/image/build.py" --platform linux/amd64 --layout "$work/oci-again" --tag ci "$@" 2>/dev/null | tail -n1)"
[ "${again##*digest=}" = "$digest" ] || fail "a second build made ${again##*digest=}, the first $digest"

# 2. A registry on loopback (a free port, storage in the temporary directory).
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$work/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
    kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry.log" >&2; fail "docker-registry exited"; }
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null || fail "docker-registry did not answer on 127.0.0.1:$port"
ref="127.0.0.1:$port/kvbridge"

# 3. Push the whole index, unchanged (its digest is the one build.py printed).
skopeo copy --quiet --all --preserve-digests --dest-tls-verify=false "oci:$work/oci:ci" "docker://$ref:ci"
pushed="$(skopeo inspect --raw --tls-verify=false "docker://$ref:ci" | sha256sum | cut -d' ' -f1)"
[ "sha256:$pushed" = "$digest" ] || fail "the registry serves index sha256:$pushed, build.py made $digest"

# 4. Pull back by digest (the platform of this machine), unpack, inspect, run.
skopeo copy --quiet --src-tls-verify=false "docker://$ref@$digest" "oci:$work/pulled:ci"
umoci unpack --image "$work/pulled:ci" "$work/bundle" >/dev/null
rootfs="$work/bundle/rootfs"
config="$work/bundle/config.json"
python3 - "$config" <<'PY' || fail "runtime config"
import json, sys
c = json.load(open(sys.argv[1]))
user = c["process"]["user"]
assert (user["uid"], user["gid"]) == (65532, 65532), user
assert c["process"]["args"][0] == "/usr/local/bin/kvbridge", c["process"]["args"]
PY
for f in usr/local/bin/kvbridge etc/ssl/certs/ca-certificates.crt etc/passwd usr/share/doc/kvbridge/sbom.spdx.json; do
    [ -s "$rootfs/$f" ] || fail "/$f is missing from the image"
done
for sh in bin/sh bin/bash usr/bin/sh; do
    [ ! -e "$rootfs/$sh" ] || fail "the image has a shell: /$sh"
done
python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["spdxVersion"] == "SPDX-2.3" and len(d["packages"]) > 10' \
    "$rootfs/usr/share/doc/kvbridge/sbom.spdx.json" || fail "SBOM"
if [ "$(id -u)" = 0 ]; then
    version="$(chroot --userspec=65532:65532 "$rootfs" /usr/local/bin/kvbridge --version)"
else
    version="$("$rootfs/usr/local/bin/kvbridge" --version)"
fi
want="kvbridge $(python3 -c 'import tomllib, sys; print(tomllib.load(open(sys.argv[1], "rb"))["workspace"]["package"]["version"])' "$repo/Cargo.toml")"
[ "$version" = "$want" ] || fail "kvbridge --version printed '$version', expected '$want'"

size="$(skopeo inspect --raw --tls-verify=false "docker://$ref@$digest" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["manifests"][0]["digest"])' \
    | xargs -I{} skopeo inspect --raw --tls-verify=false "docker://$ref@{}" \
    | python3 -c 'import json, sys; m = json.load(sys.stdin); print(sum(l["size"] for l in m["layers"]))')"
echo "tests/image: ok: $ref@$digest ran '$version' from the unpacked rootfs; compressed image $size bytes ($(awk -v b="$size" 'BEGIN { printf "%.2f MiB", b / 1048576 }'))"
