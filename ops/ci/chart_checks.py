#!/usr/bin/env python3
"""Semantic checks of a rendered glmfleet chart: the invariants a schema cannot see.

    chart_checks.py RENDERED.yaml [VALUES.yaml ...]

Schema validation (kubernetes-validate, kubernetes-models) says each manifest is well formed;
this says the manifests fit together and keep the chart's promises: Services select the pods
they front, the router discovers the replicas' headless Service, GPU requests equal limits,
the startup probe covers weight loading, the grace period covers preStop + drain, pods run
non-root on a read-only root filesystem, monitors point at real ports, referenced Secrets and
ConfigMaps exist (or are named in the values as existing ones), and so on.
Prints one line per failure and a summary; exits 1 on any failure.
"""

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

ALERTS = Path(__file__).resolve().parent.parent / "alerts" / "glmfleet-alerts.yaml"
MIN_STARTUP_SECONDS = 900
REQUIRED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/managed-by", "helm.sh/chart")


class Checker:
    def __init__(self, docs, external_names):
        self.docs = docs
        self.external = external_names
        self.failures = []
        self.passed = 0

    def check(self, cond, msg):
        if cond:
            self.passed += 1
        else:
            self.failures.append(msg)
        return cond

    def of_kind(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind, component):
        found = [d for d in self.of_kind(kind)
                 if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        self.check(len(found) == 1, f"expected one {kind} for {component}, found {len(found)}")
        return found[0] if found else None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def args_map(args):
    out = {}
    for a in args:
        if a.startswith("--"):
            k, _, v = a[2:].partition("=")
            out[k] = v
    return out


def check_workload(c, w, name):
    spec = w["spec"]["template"]["spec"]
    meta = w["spec"]["template"]["metadata"]
    c.check(selects(w["spec"]["selector"]["matchLabels"], meta["labels"]),
            f"{name}: selector does not match its pod template labels")
    c.check("checksum/config" in meta.get("annotations", {}), f"{name}: no checksum/config annotation")
    c.check(spec.get("automountServiceAccountToken") is False, f"{name}: service account token mounted")
    psc = spec.get("securityContext", {})
    c.check(psc.get("runAsNonRoot") is True, f"{name}: pod not runAsNonRoot")
    for ctr in spec["containers"]:
        cname = f"{name}/{ctr['name']}"
        sc = ctr.get("securityContext", {})
        c.check(sc.get("readOnlyRootFilesystem") is True, f"{cname}: root filesystem writable")
        c.check(sc.get("allowPrivilegeEscalation") is False, f"{cname}: privilege escalation allowed")
        c.check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{cname}: capabilities not dropped")
        res = ctr.get("resources", {})
        for r in ("cpu", "memory"):
            c.check(r in res.get("requests", {}), f"{cname}: no {r} request")
        c.check("memory" in res.get("limits", {}), f"{cname}: no memory limit")
        c.check(any(p.get("name") == "http" and p.get("containerPort") == 8000 for p in ctr.get("ports", [])),
                f"{cname}: no port http/8000")
        c.check(ctr.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/health",
                f"{cname}: readinessProbe not on /health")
        live = ctr.get("livenessProbe", {})
        c.check(live.get("httpGet", {}).get("path") == "/health" or live.get("tcpSocket", {}).get("port") == "http",
                f"{cname}: livenessProbe neither on /health nor on the http port")
        mounts = {m["mountPath"] for m in ctr.get("volumeMounts", [])}
        c.check("/tmp" in mounts, f"{cname}: no writable /tmp under the read-only root")
        c.check(any(a.startswith("--config=/etc/glmfleet/") and a.endswith(".toml") for a in ctr["args"]),
                f"{cname}: no --config=/etc/glmfleet/*.toml")
        c.check("/etc/glmfleet" in mounts, f"{cname}: config not mounted at /etc/glmfleet")
        for env in ctr.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                check_secret_ref(c, cname, ref)
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    cm_names = {d["metadata"]["name"]: d for d in c.of_kind("ConfigMap")}
    for v in vols.values():
        if "configMap" in v:
            cm = cm_names.get(v["configMap"]["name"])
            if c.check(cm is not None, f"{name}: volume {v['name']} uses missing ConfigMap"):
                for key, text in cm["data"].items():
                    if key.endswith(".toml"):
                        try:
                            tomllib.loads(text)
                            c.check(True, "")
                        except tomllib.TOMLDecodeError as exc:
                            c.check(False, f"ConfigMap {cm['metadata']['name']}/{key}: bad TOML: {exc}")
    return spec, vols


def check_secret_ref(c, where, ref):
    secrets = {d["metadata"]["name"]: d for d in c.of_kind("Secret")}
    s = secrets.get(ref["name"])
    if s is not None:
        c.check(ref["key"] in s.get("data", {}) or ref["key"] in s.get("stringData", {}),
                f"{where}: Secret {ref['name']} has no key {ref['key']}")
    else:
        c.check(ref["name"] in c.external,
                f"{where}: Secret {ref['name']} is neither rendered nor named in the values")


def check_router(c, ns):
    dep = c.one("Deployment", "router")
    if not dep:
        return None
    spec, _ = check_workload(c, dep, "router")
    ctr = spec["containers"][0]
    c.check(ctr["args"][0] == "router", "router: first argument is not `router`")
    a = args_map(ctr["args"])
    c.check(a.get("host") == "0.0.0.0" and a.get("port") == "8000", "router: not on 0.0.0.0:8000")
    c.check("policy" in a and "load-bound" in a, "router: --policy/--load-bound missing")
    hpa = [h for h in c.of_kind("HorizontalPodAutoscaler")
           if h["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]]
    pods = hpa[0]["spec"]["minReplicas"] if hpa else dep["spec"].get("replicas", 1)
    c.check(pods >= 2, f"router: {pods} pod(s); at least 2 expected")
    c.check(hpa or "replicas" in dep["spec"], "router: replicas unset without an HPA")
    if hpa:
        c.check("replicas" not in dep["spec"], "router: replicas set although an HPA manages it")
    return dep, a


def check_replica(c, router_args):
    sts = c.one("StatefulSet", "replica")
    if not sts:
        return None
    spec, vols = check_workload(c, sts, "replica")
    ctr = spec["containers"][0]
    args = ctr["args"]
    c.check(args[0] == "serve" and not args[1].startswith("--"), "replica: not `serve MODEL ...`")
    a = args_map(args)
    for flag in ("host", "port", "served-model-name", "max-model-len", "max-num-batched-tokens",
                 "max-num-seqs", "kv-cache-dtype", "shutdown-timeout"):
        c.check(flag in a, f"replica: --{flag} missing")
    c.check(a.get("kv-cache-dtype") in ("auto", "fp8"), "replica: bad --kv-cache-dtype")
    # Startup budget and drain.
    sp = ctr.get("startupProbe", {})
    budget = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
    c.check(sp.get("httpGet", {}).get("path") == "/health", "replica: startupProbe not on /health")
    c.check(budget >= MIN_STARTUP_SECONDS, f"replica: startupProbe allows {budget}s < {MIN_STARTUP_SECONDS}s")
    sleep = ctr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
    c.check(sleep is not None, "replica: no preStop sleep")
    drain = int(a.get("shutdown-timeout", 0))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    c.check(grace >= (sleep or 0) + drain,
            f"replica: terminationGracePeriodSeconds {grace} < preStop {sleep} + shutdown-timeout {drain}")
    # GPU: requests = limits; CPU-only replicas request none.
    res = ctr["resources"]
    gpus = {k: v for k, v in res.get("limits", {}).items() if "/" in k}
    gpu_req = {k: v for k, v in res.get("requests", {}).items() if "/" in k}
    c.check(gpus == gpu_req, f"replica: extended resources differ, requests {gpu_req} limits {gpus}")
    c.check(all(v == 1 for v in gpus.values()) and len(gpus) <= 1, f"replica: expected one GPU, got {gpus}")
    if gpus:
        c.check("gpu-memory-utilization" in a, "replica: GPU replica without --gpu-memory-utilization")
    # /dev/shm as memory-backed emptyDir.
    shm = [m for m in ctr["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    c.check(len(shm) == 1 and vols.get(shm[0]["name"], {}).get("emptyDir", {}).get("medium") == "Memory",
            "replica: /dev/shm is not a memory-backed emptyDir")
    # Model volume: every mount has a volume or a claim template.
    templates = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    for m in ctr["volumeMounts"]:
        c.check(m["name"] in vols or m["name"] in templates, f"replica: mount {m['name']} has no volume")
    if args[1] != "demo":
        c.check(any(m["name"] == "model" for m in ctr["volumeMounts"]), "replica: model volume not mounted")
    # Headless Service, and the router discovers exactly it.
    svc = [s for s in c.of_kind("Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    if c.check(len(svc) == 1, "replica: StatefulSet serviceName has no Service"):
        s = svc[0]
        c.check(s["spec"].get("clusterIP") == "None", "replica Service is not headless")
        c.check(selects(s["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"]),
                "replica Service does not select the replica pods")
        ns = s["metadata"]["namespace"]
        want = f"dns:{s['metadata']['name']}.{ns}.svc."
        if router_args is not None:
            disc = router_args.get("discover", "")
            c.check(disc.startswith(want) and disc.endswith(":8000"),
                    f"router discovers {disc!r}, expected {want}<domain>:8000")
    # KEDA (when rendered) scales this StatefulSet on queued requests.
    for so in c.of_kind("ScaledObject"):
        ref = so["spec"]["scaleTargetRef"]
        c.check(ref.get("kind") == "StatefulSet" and ref["name"] == sts["metadata"]["name"],
                "ScaledObject does not target the replica StatefulSet")
        c.check("vllm:num_requests_waiting" in so["spec"]["triggers"][0]["metadata"]["query"],
                "ScaledObject query does not use vllm:num_requests_waiting")
        c.check("replicas" not in sts["spec"], "replica: replicas set although KEDA manages it")
    return sts


def check_services_and_policies(c):
    pods = [(d["kind"], d["spec"]["template"]["metadata"]["labels"])
            for d in c.docs if d["kind"] in ("Deployment", "StatefulSet")]
    for s in c.of_kind("Service"):
        c.check(any(selects(s["spec"]["selector"], labels) for _, labels in pods),
                f"Service {s['metadata']['name']} selects no pods")
        c.check("glmfleet.io/scrape-job" in s["metadata"]["labels"],
                f"Service {s['metadata']['name']}: no glmfleet.io/scrape-job label")
    router_svc = [s for s in c.of_kind("Service") if s["metadata"]["labels"].get("app.kubernetes.io/component") == "router"]
    for s in router_svc:
        c.check(s["spec"]["ports"][0]["targetPort"] == "http", "router Service does not target port http")
    for pdb in c.of_kind("PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        c.check(any(selects(sel, labels) for _, labels in pods), f"PDB {pdb['metadata']['name']} selects no pods")
        c.check(("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"]),
                f"PDB {pdb['metadata']['name']}: exactly one of minAvailable/maxUnavailable")
    for np in c.of_kind("NetworkPolicy"):
        target = np["spec"]["podSelector"]["matchLabels"]
        c.check(target.get("app.kubernetes.io/component") == "replica", "NetworkPolicy does not target replicas")
        peers = np["spec"]["ingress"][0]["from"]
        router_labels = [labels for kind, labels in pods if labels.get("app.kubernetes.io/component") == "router"]
        c.check(any("podSelector" in p and "namespaceSelector" not in p
                    and any(selects(p["podSelector"]["matchLabels"], rl) for rl in router_labels)
                    for p in peers), "NetworkPolicy does not admit the router pods")
        c.check(any("namespaceSelector" in p for p in peers), "NetworkPolicy does not admit Prometheus")
    for sm in c.of_kind("ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        svcs = [s for s in c.of_kind("Service") if selects(sel, s["metadata"]["labels"])]
        c.check(len(svcs) == 1, f"ServiceMonitor {sm['metadata']['name']} selects {len(svcs)} Services")
        for s in svcs:
            ports = {p["name"] for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                c.check(ep["port"] in ports and ep.get("path") == "/metrics",
                        f"ServiceMonitor {sm['metadata']['name']}: endpoint {ep['port']} not a port of {s['metadata']['name']}")
            c.check(sm["spec"].get("jobLabel") in s["metadata"]["labels"],
                    f"ServiceMonitor {sm['metadata']['name']}: jobLabel not on the Service")
    for pr in c.of_kind("PrometheusRule"):
        c.check(pr["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"],
                "PrometheusRule differs from ops/alerts/glmfleet-alerts.yaml")
    for cm in c.of_kind("ConfigMap"):
        for key, text in cm.get("data", {}).items():
            if key.endswith(".json"):
                dash = json.loads(text)
                c.check(bool(dash.get("uid")) and dash.get("panels"), f"ConfigMap {key}: not a dashboard")
                c.check(cm["metadata"]["labels"].get("grafana_dashboard") is not None
                        or any(v for k, v in cm["metadata"]["labels"].items() if "dashboard" in k),
                        f"dashboard ConfigMap {cm['metadata']['name']}: no sidecar label")


def main():
    rendered = Path(sys.argv[1])
    docs, user_objects = [], set()
    for chunk in re.split(r"^---\s*$", rendered.read_text(), flags=re.M):
        doc = yaml.safe_load(chunk)
        if doc:
            docs.append(doc)
            if "# Source: glmfleet/templates/extra-objects.yaml" in chunk:
                user_objects.add(id(doc))
    external = set()
    for vf in sys.argv[2:]:
        def walk(v):
            if isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)
            elif isinstance(v, str):
                external.add(v)
        walk(yaml.safe_load(Path(vf).read_text()) or {})
    c = Checker(docs, external)
    for d in docs:
        labels = d["metadata"].get("labels", {})
        if id(d) in user_objects:  # extraObjects are the user's, labels included
            continue
        if d["kind"] != "Pod" or "helm.sh/hook" not in d["metadata"].get("annotations", {}):
            for lbl in REQUIRED_LABELS:
                c.check(lbl in labels, f"{d['kind']}/{d['metadata']['name']}: no label {lbl}")
        c.check(re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", d["metadata"]["name"]) is not None
                and len(d["metadata"]["name"]) <= 63, f"{d['kind']}/{d['metadata']['name']}: bad name")
    router = check_router(c, None)
    check_replica(c, router[1] if router else None)
    check_services_and_policies(c)
    for f in c.failures:
        print(f"FAIL {rendered.name}: {f}", file=sys.stderr)
    print(f"chart checks {rendered.name}: {c.passed} passed, {len(c.failures)} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
