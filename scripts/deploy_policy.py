#!/usr/bin/env python3
"""Policy test over rendered manifests (and deploy/compose.yaml).

    deploy_policy.py --overlay NAME RENDERED.yaml   one kustomize overlay
    deploy_policy.py --compose deploy/compose.yaml
    deploy_policy.py --self-test                    broken inputs must be refused

Every container: requests and limits for cpu and memory; liveness and
readiness probes (Jobs excepted: they run to completion); runs as non-root;
allowPrivilegeEscalation false; capabilities drop ALL, none added; a
RuntimeDefault/Localhost seccomp profile; a read-only root filesystem; a
tagged image that is not `latest`. No privileged containers, host namespaces
or hostPath volumes. In overlays with network policies (required in dev and
prod) every pod is selected by an allow policy besides the default deny. In
prod every mesh service runs at least two replicas under a PDB.
Exits non-zero on any violation; prints the number of checks passed.
"""
import argparse
import copy
import sys

import yaml

# Exceptions, each with its reason. Keys: (pod's app.kubernetes.io/name, container name).
READ_WRITE_ROOT = {
    ("kafka", "kafka"): "dev only: the apache/kafka image renders /opt/kafka/config from KAFKA_* variables at start",
}
# bubblewrap needs to create user namespaces and mount a fresh /proc, which
# the runtime's default seccomp/AppArmor profiles and masked /proc forbid.
# Allowed only with the pod in its own user namespace (hostUsers: false), so
# container root maps to an unprivileged host uid. docs/deploy.md, "Executor sandbox".
SANDBOX = {
    ("executor", "devcycle"): "the executor runs agents in bubblewrap",
    ("devcycle", "devcycle"): "`devcycle up` (embedded) runs an executor in-process",
}
NETPOL_REQUIRED = {"dev", "prod"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}


class Report:
    def __init__(self):
        self.passed, self.failures = 0, []

    def check(self, ok, where, what):
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{where}: {what}")


def pod_spec(obj):
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels", {}), obj["spec"]
    t = obj["spec"]["template"]
    return t.get("metadata", {}).get("labels", {}), t["spec"]


def image_ok(image):
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and not name.endswith(":latest")


def check_pod(obj, r):
    kind, name = obj["kind"], obj["metadata"]["name"]
    labels, spec = pod_spec(obj)
    app = labels.get("app.kubernetes.io/name", name)
    psc = spec.get("securityContext", {})
    for f in ("hostNetwork", "hostPID", "hostIPC"):
        r.check(not spec.get(f), f"{kind}/{name}", f"{f} must not be set")
    for v in spec.get("volumes", []):
        r.check("hostPath" not in v, f"{kind}/{name}", f"volume {v['name']}: hostPath is not allowed")
    for c in spec.get("initContainers", []) + spec["containers"]:
        where = f"{kind}/{name} container {c['name']}"
        csc = c.get("securityContext", {})
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            for k in ("cpu", "memory"):
                r.check(k in res.get(part, {}), where, f"resources.{part}.{k} missing")
        if kind != "Job" and c in spec["containers"]:
            for p in ("livenessProbe", "readinessProbe"):
                r.check(p in c, where, f"{p} missing")
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        r.check(non_root and uid != 0, where, "must run as non-root (runAsNonRoot: true, runAsUser != 0)")
        r.check(csc.get("allowPrivilegeEscalation") is False, where, "allowPrivilegeEscalation must be false")
        r.check(not csc.get("privileged"), where, "privileged is not allowed")
        caps = csc.get("capabilities", {})
        r.check("ALL" in caps.get("drop", []) and not caps.get("add"), where, "capabilities must drop ALL and add none")
        ro = csc.get("readOnlyRootFilesystem") is True
        r.check(ro or (app, c["name"]) in READ_WRITE_ROOT, where, "readOnlyRootFilesystem must be true")
        r.check(image_ok(c.get("image", "")), where, f"image {c.get('image')!r} must have a tag other than latest")
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        apparmor = csc.get("appArmorProfile", psc.get("appArmorProfile", {})).get("type")
        proc = csc.get("procMount", "Default")
        relaxed = seccomp == "Unconfined" or apparmor == "Unconfined" or proc == "Unmasked"
        if relaxed:
            r.check((app, c["name"]) in SANDBOX, where, "unconfined seccomp/AppArmor or unmasked /proc is allowed only for the sandboxing executor")
            r.check(spec.get("hostUsers") is False, where, "a relaxed sandbox needs hostUsers: false")
        else:
            r.check(seccomp in ("RuntimeDefault", "Localhost"), where, "seccompProfile must be RuntimeDefault or Localhost")
    return labels


def selects(selector, labels):
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        has, val = e["key"] in labels, labels.get(e["key"])
        op = e["operator"]
        if (op == "In" and val not in e["values"]) or (op == "NotIn" and val in e.get("values", [])) \
                or (op == "Exists" and not has) or (op == "DoesNotExist" and has):
            return False
    return True


def check_overlay(overlay, objs, r):
    pods = {}
    for o in objs:
        if o["kind"] in POD_KINDS:
            pods[f"{o['kind']}/{o['metadata']['name']}"] = (o, check_pod(o, r))
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    if overlay in NETPOL_REQUIRED or policies:
        r.check(bool(policies), f"overlay {overlay}", "must include the network-policies component")
        deny = [p for p in policies if p["spec"].get("podSelector") == {}
                and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                and not p["spec"].get("ingress") and not p["spec"].get("egress")]
        r.check(bool(deny), f"overlay {overlay}", "needs a default-deny NetworkPolicy (Ingress and Egress)")
        allow = [p for p in policies if p["spec"].get("podSelector")]
        for key, (o, labels) in pods.items():
            r.check(any(selects(p["spec"]["podSelector"], labels) for p in allow), key,
                    "no NetworkPolicy selects its pods (beyond the namespace-wide ones)")
    if overlay == "prod":
        pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
        for key, (o, labels) in pods.items():
            if o["kind"] != "Deployment" or labels.get("app.kubernetes.io/component") != "mesh":
                continue
            r.check(o["spec"].get("replicas", 1) >= 2, key, "prod needs at least 2 replicas")
            r.check(any(selects(p["spec"]["selector"], labels) for p in pdbs), key, "prod needs a PodDisruptionBudget")
        for so in (o for o in objs if o["kind"] == "ScaledObject"):
            r.check(so["spec"].get("minReplicaCount", 0) >= 2, f"ScaledObject/{so['metadata']['name']}",
                    "prod autoscaling must keep at least 2 replicas")


COMPOSE_REQUIRED = {"pki", "migrate", "postgres", "redis", "kafka", "registry-1", "registry-2", "scheduler-1",
                    "scheduler-2", "executor-1", "executor-2", "gateway", "prometheus", "grafana"}


def check_compose(doc, r):
    services = doc.get("services", {})
    r.check(COMPOSE_REQUIRED <= set(services), "compose", f"missing services {sorted(COMPOSE_REQUIRED - set(services))}")
    volumes = set(doc.get("volumes") or {})
    for name, s in services.items():
        image = s.get("image", "").split("${DEVCYCLE_IMAGE:-")[-1].rstrip("}")
        r.check(image_ok(image), f"compose {name}", f"image {s.get('image')!r} must have a tag other than latest")
        deps = s.get("depends_on", {})
        for d in deps:
            r.check(d in services, f"compose {name}", f"depends on unknown service {d}")
        for v in s.get("volumes", []):
            src = v.split(":", 1)[0]
            if not src.startswith((".", "/")):
                r.check(src in volumes, f"compose {name}", f"volume {src} is not declared")
        if "devcycle" in s.get("image", "") and name not in ("pki", "migrate"):
            r.check(s.get("read_only") is True and "ALL" in s.get("cap_drop", []), f"compose {name}",
                    "devcycle services run read-only with all capabilities dropped")
            r.check({"pki", "migrate"} <= set(deps), f"compose {name}", "must start after pki and migrate")


def good_objects():
    """A minimal compliant overlay: one Deployment, a default deny and an allow policy."""
    labels = {"app.kubernetes.io/name": "registry", "app.kubernetes.io/part-of": "devcycle"}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "registry"},
           "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
               "metadata": {"labels": labels}, "spec": {
                   "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                   "containers": [{"name": "devcycle", "image": "ghcr.io/devcycle/devcycle:0.1.0",
                                   "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                                   "livenessProbe": {"grpc": {"port": 7410}}, "readinessProbe": {"grpc": {"port": 7410}},
                                   "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                       "capabilities": {"drop": ["ALL"]}}}]}}}}
    deny = {"kind": "NetworkPolicy", "metadata": {"name": "default-deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    allow = {"kind": "NetworkPolicy", "metadata": {"name": "registry"},
             "spec": {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress"], "ingress": [{}]}}
    return [dep, deny, allow]


def self_test():
    def container(objs):
        return objs[0]["spec"]["template"]["spec"]["containers"][0]
    broken = {
        "resources.requests.cpu missing": lambda o: container(o).pop("resources"),
        "livenessProbe missing": lambda o: container(o).pop("livenessProbe"),
        "must have a tag other than latest": lambda o: container(o).update(image="ghcr.io/devcycle/devcycle:latest"),
        "must have a tag other than latest ": lambda o: container(o).update(image="ghcr.io/devcycle/devcycle"),
        "must run as non-root": lambda o: o[0]["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot"),
        "allowPrivilegeEscalation must be false": lambda o: container(o)["securityContext"].pop("allowPrivilegeEscalation"),
        "capabilities must drop ALL": lambda o: container(o)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
        "readOnlyRootFilesystem must be true": lambda o: container(o)["securityContext"].update(readOnlyRootFilesystem=False),
        "only for the sandboxing executor": lambda o: container(o)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        "no NetworkPolicy selects its pods": lambda o: o.pop(2),
        "needs a default-deny NetworkPolicy": lambda o: o.pop(1),
    }
    r = Report()
    check_overlay("dev", good_objects(), r)
    assert not r.failures, f"a compliant overlay was refused: {r.failures}"
    # The executor's exception holds only with hostUsers: false.
    objs = good_objects()
    objs[0]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] = "executor"
    objs[2]["spec"]["podSelector"] = {"matchLabels": {"app.kubernetes.io/name": "executor"}}
    container(objs)["securityContext"].update(seccompProfile={"type": "Unconfined"}, procMount="Unmasked")
    r = Report()
    check_overlay("dev", objs, r)
    assert any("hostUsers: false" in f for f in r.failures), r.failures
    objs[0]["spec"]["template"]["spec"]["hostUsers"] = False
    r = Report()
    check_overlay("dev", objs, r)
    assert not r.failures, r.failures
    for expect, breakit in broken.items():
        objs = copy.deepcopy(good_objects())
        breakit(objs)
        r = Report()
        check_overlay("dev", objs, r)
        assert any(expect.strip() in f for f in r.failures), f"not refused ({expect}): {r.failures}"
    # prod: a mesh service with one replica is refused.
    objs = good_objects()
    objs[0]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = "mesh"
    r = Report()
    check_overlay("prod", objs, r)
    assert any("at least 2 replicas" in f for f in r.failures), r.failures
    print(f"policy self-test: {len(broken) + 2} broken inputs refused, compliant inputs accepted")


def main():
    ap = argparse.ArgumentParser()
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--overlay")
    g.add_argument("--compose", action="store_true")
    g.add_argument("--self-test", action="store_true")
    ap.add_argument("file", nargs="?")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return 0
    r = Report()
    if args.compose:
        check_compose(yaml.safe_load(open(args.file)), r)
        what = "compose"
    else:
        check_overlay(args.overlay, [o for o in yaml.safe_load_all(open(args.file)) if o], r)
        what = f"overlay {args.overlay}"
    for f in r.failures:
        print(f"  policy: {f}", file=sys.stderr)
    print(f"policy {what}: {r.passed} checks passed, {len(r.failures)} failed")
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())
