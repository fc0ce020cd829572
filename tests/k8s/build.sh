#!/usr/bin/env bash
# Builds the test-only Kubernetes pieces from their published Go modules (module proxy only):
#   kube-apiserver  (k8s.io/kubernetes)            tests/k8s/kube-apiserver
#   etcd            (go.etcd.io/etcd/server/v3)    tests/k8s/etcd
#   secrets-store-csi-driver + its CRDs            tests/k8s/secrets-store-csi-driver
#   helm (chart lint/template tests)               tests/k8s/helm
#   the ServiceMonitor CRD (prometheus-operator module, YAML only) into crds-monitoring/
# into a cache directory outside the repository:
#   ${KVBRIDGE_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvbridge-testenv}/<versions>/{bin,crds}
# Already built binaries (same go.mod/go.sum/main.go/flags/Go version) are skipped.
#
# Usage: tests/k8s/build.sh              build what is missing, print timings and the directory
#        tests/k8s/build.sh --print-dir  print the directory only (crates/testenv computes the same)
#
# Versions live in tests/k8s/versions.env. After editing it, run this script outside CI: it
# rewrites the wrapper go.mod/go.sum files (kube-apiserver's staging `replace` list is generated
# from k8s.io/kubernetes' own go.mod) and asks you to commit them. In CI (CI=true) an out-of-date
# go.mod is an error instead.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_csi-${CSI_DRIVER_VERSION}"
root="${KVBRIDGE_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvbridge-testenv}/$key"

if [ "${1:-}" = "--print-dir" ]; then
    printf '%s\n' "$root"
    exit 0
fi

command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "build.sh: go not found on PATH (Go >= 1.26 is needed)" >&2; exit 1; }

# Lean, reproducible, static builds. Keep the machine's Go (>= 1.26) unless the caller chose
# another one; an older Go (>= 1.21) fetches the approved go1.27.3 toolchain from the module proxy.
export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false"
if [ -z "${GOTOOLCHAIN:-}" ]; then
    go_minor="$(GOTOOLCHAIN=local go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
    if [ "${go_minor:-0}" -ge 26 ]; then export GOTOOLCHAIN=local; else export GOTOOLCHAIN=go1.27.3; fi
fi

bin="$root/bin"
mkdir -p "$bin" "$root/crds"

k8s_staging_version="v0.${K8S_VERSION#v1.}"  # v1.36.3 -> v0.36.3
k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"

out_of_date() {
    local dir="$1" what="$2"
    if [ "${CI:-}" = "true" ]; then
        echo "build.sh: tests/k8s/$dir/go.mod is out of date ($what). Run tests/k8s/build.sh" \
             "outside CI and commit tests/k8s/$dir/go.mod and go.sum." >&2
        exit 1
    fi
    echo "build.sh: updating tests/k8s/$dir/go.mod ($what); commit go.mod and go.sum afterwards" >&2
}

requires() {  # requires DIR MODULE VERSION: does DIR/go.mod require exactly MODULE VERSION?
    go mod edit -json "$here/$1/go.mod" \
        | tr -d ' \t\n' | grep -qF "{\"Path\":\"$2\",\"Version\":\"$3\""
}

# Plain modules: require the pinned version, tidy when it changed.
sync_module() {  # sync_module DIR MODULE VERSION
    local dir="$1" module="$2" version="$3"
    if ! requires "$dir" "$module" "$version" || [ ! -s "$here/$dir/go.sum" ]; then
        out_of_date "$dir" "$module $version"
        go -C "$here/$dir" mod edit -require="$module@$version"
        go -C "$here/$dir" mod tidy
    fi
}

# kube-apiserver: k8s.io/kubernetes replaces each staging module with ./staging/src/k8s.io/<m>,
# which a consumer cannot see; replace each with its published k8s.io/<m> v0.N.P instead. The list
# comes from the kubernetes module's own go.mod so a version bump needs no hand edits.
sync_kube_apiserver() {
    local dir=kube-apiserver gomod staging want have
    gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
    [ -s "$gomod" ] || { echo "build.sh: could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
    staging="$(awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }
                    $1 == "replace" && $3 == "=>" && $4 ~ /^\.\/staging\// { print $2 }' "$gomod" | sort -u)"
    [ -n "$staging" ] || { echo "build.sh: no staging replaces found in $gomod" >&2; exit 1; }
    want="$(for m in $staging; do printf '%s=%s@%s\n' "$m" "$m" "$k8s_staging_version"; done)"
    have="$(go mod edit -json "$here/$dir/go.mod" | tr -d ' \t\n' \
        | { grep -o '"Old":{"Path":"[^"]*"},"New":{"Path":"[^"]*","Version":"[^"]*"}' || true; } \
        | sed 's/"Old":{"Path":"\([^"]*\)"},"New":{"Path":"\([^"]*\)","Version":"\([^"]*\)"}/\1=\2@\3/' \
        | sort -u)"
    if [ "$want" != "$have" ] || ! requires "$dir" k8s.io/kubernetes "$K8S_VERSION" \
        || [ ! -s "$here/$dir/go.sum" ]; then
        out_of_date "$dir" "k8s.io/kubernetes $K8S_VERSION, $(wc -l <<<"$want") staging replaces"
        local args=(-require="k8s.io/kubernetes@$K8S_VERSION")
        for r in $have; do args+=(-dropreplace="${r%%=*}"); done
        for r in $want; do args+=(-replace="$r"); done
        go -C "$here/$dir" mod edit "${args[@]}"
        go -C "$here/$dir" mod tidy
    fi
}

# CPU seconds (user + system) used so far by this shell's finished children, into $cpu_now: with
# other work on the machine, wall time alone says little about a build. (`times` must run in this
# shell, not in a pipeline's subshell.)
child_cpu() {
    times >"$root/.times"
    cpu_now="$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); t += p[1] * 60 + p[2] } printf "%d", t }' "$root/.times")"
}

fmt_size() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

built_any=0
build() {  # build NAME DIR PACKAGE LDFLAGS
    local name="$1" dir="$2" pkg="$3" ldflags="$4" stamp start secs cpu0 cpu
    stamp="$( (cd "$here/$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
               go version; printf '%s\n%s\n' "$pkg" "$ldflags") | sha256sum | cut -c1-64)"
    if [ -x "$bin/$name" ] && [ "$(cat "$bin/.$name.stamp" 2>/dev/null)" = "$stamp" ]; then
        printf '%-26s cached  %s (%s)\n' "$name" "$bin/$name" "$(fmt_size "$bin/$name")"
        return
    fi
    start=$SECONDS
    child_cpu; cpu0=$cpu_now
    go -C "$here/$dir" build -trimpath -ldflags="-s -w $ldflags" -o "$bin/.$name.tmp" "$pkg"
    mv -f "$bin/.$name.tmp" "$bin/$name"
    printf '%s\n' "$stamp" >"$bin/.$name.stamp"
    secs=$((SECONDS - start))
    child_cpu; cpu=$((cpu_now - cpu0))
    built_any=1
    printf '%-26s built in %ds (CPU %ds)  %s (%s)\n' "$name" "$secs" "$cpu" "$bin/$name" "$(fmt_size "$bin/$name")"
    printf '%s %s built in %ds (CPU %ds), %s bytes, %s\n' "$(date -u +%FT%TZ)" "$name" "$secs" "$cpu" \
        "$(stat -c %s "$bin/$name")" "$(go version)" >>"$root/build.log"
}

total_start=$SECONDS

sync_module etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
build etcd etcd . ""

sync_module secrets-store-csi-driver sigs.k8s.io/secrets-store-csi-driver "$CSI_DRIVER_VERSION"
build secrets-store-csi-driver secrets-store-csi-driver \
    sigs.k8s.io/secrets-store-csi-driver/cmd/secrets-store-csi-driver \
    "-X sigs.k8s.io/secrets-store-csi-driver/pkg/version.BuildVersion=$CSI_DRIVER_VERSION"
csi_dir="$(go -C "$here/secrets-store-csi-driver" list -m -f '{{.Dir}}' sigs.k8s.io/secrets-store-csi-driver)"
cp -f "$csi_dir"/config/crd/bases/*.yaml "$root/crds/"
chmod u+w "$root"/crds/*.yaml

sync_module helm helm.sh/helm/v3 "$HELM_VERSION"
# As helm's Makefile: the Kubernetes version `helm template` and `helm lint` assume is the one of
# the client-go it is built with (v0.N.P -> 1.N), not the v1.20 compiled in.
helm_k8s_minor="$(go -C "$here/helm" list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)"
ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_k8s_minor"
done
build helm helm helm.sh/helm/v3/cmd/helm "$ldflags"

# The ServiceMonitor CRD, so that the chart's ServiceMonitors are validated by the real API
# server: the YAML the Prometheus Operator's Go module ships (nothing is built from it).
po_dir="$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[ -d "$po_dir" ] || { echo "build.sh: could not download the prometheus-operator module" >&2; exit 1; }
mkdir -p "$root/crds-monitoring"
cp -f "$po_dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$root/crds-monitoring/"
chmod u+w "$root"/crds-monitoring/*.yaml

sync_kube_apiserver
v="k8s.io/component-base/version"
cv="k8s.io/client-go/pkg/version"
ldflags=""
for pkgvar in "$v" "$cv"; do
    ldflags+=" -X $pkgvar.gitVersion=$K8S_VERSION -X $pkgvar.gitMajor=1"
    ldflags+=" -X $pkgvar.gitMinor=$k8s_minor -X $pkgvar.gitTreeState=clean"
done
build kube-apiserver kube-apiserver . "${ldflags# }"

echo "control plane binaries ready in $((SECONDS - total_start))s (anything built: $built_any)"
echo "CRDs: $(cd "$root/crds" && echo *.yaml) crds-monitoring/$(cd "$root/crds-monitoring" && echo *.yaml)"
echo "export KVBRIDGE_TESTENV_DIR=$root"
