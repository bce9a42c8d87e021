#!/usr/bin/env bash
# Builds etcd, the Kubernetes control plane, kubectl, kwok, kwokctl and helm from the Go module
# proxy, once per pinned version set, into a cache directory outside the clone.
# The control plane and helm have separate stamps, so a new helm version reuses a cached control
# plane and the other way round.
# Prints the directory of the binaries on its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"

bin_dir="$(cluster_bin_dir)"
control_plane_stamp="$bin_dir/.complete"
helm_stamp="$bin_dir/.helm-v$HELM_VERSION"

if [[ -f "$control_plane_stamp" && -f "$helm_stamp" ]]; then
  echo "$bin_dir"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "go not found: install Go $GO_MIN_VERSION or newer, then run this script again" >&2
  exit 1
fi

mkdir -p "$bin_dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build_control_plane() {
  local started command package minor version_flags="-s -w"
  started=$(date +%s)
  # The module is copied so that a build never writes into the clone.
  cp "$here/gomod/go.mod" "$here/gomod/go.sum" "$work/"
  cd "$work"

  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    version_flags+=" -X $package.gitVersion=v$KUBERNETES_VERSION"
    version_flags+=" -X $package.gitMajor=${KUBERNETES_VERSION%%.*}"
    minor=${KUBERNETES_VERSION#*.}
    version_flags+=" -X $package.gitMinor=${minor%%.*}"
    version_flags+=" -X $package.gitTreeState=clean"
  done

  # One binary per go build call keeps the peak memory of linking to one binary at a time.
  for command in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    echo "building $command v$KUBERNETES_VERSION" >&2
    CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$version_flags" \
      -o "$bin_dir/$command" "k8s.io/kubernetes/cmd/$command"
  done

  echo "building etcd v$ETCD_VERSION" >&2
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$bin_dir/etcd" \
    go.etcd.io/etcd/server/v3

  # kwok pins other k8s.io versions, so it installs on its own, outside this module.
  echo "building kwok and kwokctl v$KWOK_VERSION" >&2
  cd /
  CGO_ENABLED=0 GOFLAGS='' GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@v$KWOK_VERSION"

  touch "$control_plane_stamp"
  echo "built the control plane binaries in $(($(date +%s) - started)) s" >&2
}

build_helm() {
  local started
  started=$(date +%s)
  echo "building helm v$HELM_VERSION" >&2
  # helm's go.mod has no replace directives, so go install builds it at the pinned version.
  # Without the -X flag `helm version` prints a development version.
  cd /
  CGO_ENABLED=0 GOFLAGS='' GOBIN="$bin_dir" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@v$HELM_VERSION"
  touch "$helm_stamp"
  echo "built helm in $(($(date +%s) - started)) s" >&2
}

if [[ ! -f "$control_plane_stamp" ]]; then
  build_control_plane
fi
if [[ ! -f "$helm_stamp" ]]; then
  build_helm
fi
echo "$bin_dir"
