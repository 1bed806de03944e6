#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok, helm) and the real node's kubelet from the Go module proxy, because these
# machines have no Docker engine and no release downloads. Binaries are cached under $NEWFUSE_CACHE/<component>-<version>/bin,
# stamped with a hash of the wrapper module, so a warm machine skips straight to "cached".
#
# Usage: hack/localcluster/build.sh [component ...]   (default: all)
# Prints the bin directory of each component on the last lines, as NAME_BIN=<dir>.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../versions.env
source "$here/../versions.env"

cache=${NEWFUSE_CACHE:-$HOME/.cache/newfuse}
export GOMODCACHE=${GOMODCACHE_OVERRIDE:-$cache/go/mod}
export GOCACHE=${GOCACHE_OVERRIDE:-$cache/go/build}
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
mkdir -p "$GOMODCACHE" "$GOCACHE"

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v go >/dev/null || { log "Go is required (https://go.dev/dl); none found on PATH"; exit 1; }

# stamp <wrapper dir> <version>: identifies exactly what a cached bin dir was built from
# (bump LAYOUT when what build.sh puts in a bin dir changes).
LAYOUT=2
stamp() { cat "$1/go.mod" "$1/go.sum" <(echo "$2 $LAYOUT") <(go env GOVERSION) | sha256sum | cut -c1-16; }

# kwok refuses to start without Stage objects. The default "fast" set (nodes become Ready and keep
# a lease; pods become Ready; deleted pods go away) ships inside the pinned kwok module: copy it
# from there, so the stages always match the binary.
copy_kwok_stages() {
  local dest=$1 dir
  dir=$(cd "$here/gomod/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  mkdir -p "$dest/stages"
  cp "$dir"/kustomize/stage/node/fast/node-initialize.yaml \
    "$dir"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    "$dir"/kustomize/stage/pod/fast/pod-{ready,complete,delete}.yaml "$dest/stages/"
}

# build_component NAME VERSION LDFLAGS PKG...: builds each package's binary into the cache.
build_component() {
  local name=$1 version=$2 ldflags=$3; shift 3
  local wrapper="$here/gomod/$name" dest="$cache/$name-$version/bin"
  local want; want=$(stamp "$wrapper" "$version")
  if [[ -f "$dest/.stamp" && "$(cat "$dest/.stamp")" == "$want" ]]; then
    log "$name $version: cached in $dest"
  else
    local tmp="$dest.partial"
    rm -rf "$tmp"; mkdir -p "$tmp"
    local spec pkg bin i=0
    for spec in "$@"; do
      # PKG or PKG=BINARY: a module path ending in /vN would otherwise name the binary "server".
      pkg=${spec%%=*}; bin=${spec#*=}; [[ "$spec" == *=* ]] || bin=$(basename "$pkg")
      i=$((i + 1))
      local started=$SECONDS
      log "$name $version: building $bin ($i/$#) ..."
      (cd "$wrapper" && go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$tmp/$bin" "$pkg")
      log "$name $version: $bin done in $((SECONDS - started))s"
    done
    [[ $name != kwok ]] || copy_kwok_stages "$tmp"
    echo "$want" >"$tmp/.stamp"
    rm -rf "$dest"; mv "$tmp" "$dest"
  fi
  printf '%s_BIN=%s\n' "$(echo "$name" | tr '[:lower:]' '[:upper:]')" "$dest"
}

k8s_ldflags() {
  local v=${KUBERNETES_VERSION#v} minor major date
  major=${v%%.*}; minor=${v#*.}; minor=${minor%%.*}
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local flags="-s -w" pkg
  # Without the stamp every binary says v0.0.0-master and version-sniffing tools pick wrong flags.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  echo "$flags"
}

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(etcd kubernetes kubelet kwok helm)
for c in "${components[@]}"; do
  case $c in
    etcd) build_component etcd "$ETCD_VERSION" "-s -w" go.etcd.io/etcd/server/v3=etcd ;;
    kubernetes)
      build_component kubernetes "$KUBERNETES_VERSION" "$(k8s_ldflags)" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl ;;
    # The real node's kubelet: same pinned Kubernetes, its own wrapper module and cache dir, so
    # building it never invalidates the control plane's cached binaries.
    kubelet) build_component kubelet "$KUBERNETES_VERSION" "$(k8s_ldflags)" k8s.io/kubernetes/cmd/kubelet ;;
    kwok) build_component kwok "$KWOK_VERSION" "-s -w" sigs.k8s.io/kwok/cmd/kwok ;;
    helm) build_component helm "$HELM_VERSION" "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      helm.sh/helm/v3/cmd/helm ;;
    *) log "unknown component '$c' (expected etcd, kubernetes, kubelet, kwok or helm)"; exit 2 ;;
  esac
done
