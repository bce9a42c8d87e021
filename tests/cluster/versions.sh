# Versions of the local control plane, shared by the cluster scripts.
# etcd matches the version that k8s.io/kubernetes v1.37.2 itself requires.
KUBERNETES_VERSION=1.37.2
ETCD_VERSION=3.7.0
KWOK_VERSION=0.8.0
GO_MIN_VERSION=1.26.0
# Helm renders and lints the chart in deploy/helm in the tests; v4.3.2 builds against the same
# k8s.io/client-go v0.37.2 as the control plane.
HELM_VERSION=4.3.2

# Builds survive a fresh clone here; VISA_K8S_CACHE moves them.
cluster_cache_root() {
  echo "${VISA_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/visa-k8s-provider}"
}

cluster_bin_dir() {
  echo "$(cluster_cache_root)/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
}
