// Validates rendered Kubernetes manifests against the JSON schemas shipped in the npm
// `kubernetes-models` packages: built-in kinds (a second opinion next to kubernetes-validate)
// and the custom resources kubernetes-validate skips: Prometheus operator (ServiceMonitor,
// PrometheusRule) and KEDA (ScaledObject).
//
//   node validate-resources.mjs docs.json
//
// docs.json: a JSON array of manifests (ops/ci/check-chart.sh converts helm's YAML output).
// ES modules resolve packages from the script's own location, so check-chart.sh copies this
// file into the npm install directory (ops/ci/lib.sh ensure_node_models) and runs it there.
// Exits 1 on any invalid document or on a kind no package models.
import { readFileSync } from "node:fs";

// apiVersion group -> npm module prefix.
const GROUPS = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator/monitoring.coreos.com",
  "keda.sh": "@kubernetes-models/keda/keda.sh",
};

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const spec = GROUPS[group]
    ? `${GROUPS[group]}/${version}`
    : group === "" ? `kubernetes-models/${version}` : `kubernetes-models/${group}/${version}`;
  try {
    const mod = await import(spec);
    return mod[kind] ?? null;
  } catch (err) {
    if (err.code === "ERR_MODULE_NOT_FOUND" || err.code === "ERR_PACKAGE_PATH_NOT_EXPORTED") return null;
    throw err;
  }
}

const docs = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failures = 0;
let checked = 0;
for (const doc of docs) {
  const id = `${doc.kind}/${doc.metadata?.name} (${doc.apiVersion})`;
  const Model = await modelFor(doc.apiVersion, doc.kind);
  if (!Model) {
    console.error(`FAIL ${id}: no schema for this kind in kubernetes-models`);
    failures++;
    continue;
  }
  try {
    new Model(doc).validate();
    checked++;
  } catch (err) {
    failures++;
    const details = err.errors
      ? err.errors.map((e) => `${e.instancePath || "/"} ${e.message}`).join("; ")
      : err.message;
    console.error(`FAIL ${id}: ${details}`);
  }
}
console.log(`kubernetes-models: ${checked} valid, ${failures} invalid`);
process.exit(failures ? 1 : 0);
