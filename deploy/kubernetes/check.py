"""Checks the Kubernetes manifests: every file parses as YAML, every
document is a well-formed object, and the pieces agree with each other and
with cache-service's contract (names, selectors, ports, probes, the
environment, the Secret). With kubectl on the PATH it also builds them with
`kubectl kustomize` (local: no cluster is contacted). Exit code 1 on any
problem."""

import pathlib
import shutil
import subprocess
import sys

import yaml

here = pathlib.Path(__file__).resolve().parent
problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


docs = []
kustomization = yaml.safe_load((here / "kustomization.yaml").read_text())
for name in kustomization["resources"]:
    path = here / name
    need(path.is_file(), f"kustomization lists {name}, which is missing")
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        for field in ("apiVersion", "kind", "metadata"):
            need(field in doc, f"{name}: a document without {field}")
        need("name" in doc.get("metadata", {}), f"{name}: a {doc.get('kind')} without a name")
        docs.append((name, doc))

listed = {p.name for p in here.glob("*.yaml")} - {"kustomization.yaml"}
need(listed == set(kustomization["resources"]), f"kustomization lists {kustomization['resources']}, the dir has {sorted(listed)}")

by_kind = {}
for _, d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

(sts,) = by_kind["StatefulSet"]
spec = sts["spec"]
labels = spec["template"]["metadata"]["labels"]
need(spec["selector"]["matchLabels"].items() <= labels.items(), "the StatefulSet's selector does not match its pods")
need(spec.get("podManagementPolicy") == "Parallel", "pods must start at once (podManagementPolicy: Parallel)")

services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
headless = services.get(spec["serviceName"])
need(headless is not None, f"no Service {spec['serviceName']} (the StatefulSet's serviceName)")
need(headless and headless["spec"].get("clusterIP") == "None", "the StatefulSet's Service must be headless")
need(headless and headless["spec"].get("publishNotReadyAddresses") is True, "the headless Service must publish not-ready pods (members find each other while starting)")
for s in services.values():
    need(s["spec"]["selector"].items() <= labels.items(), f"Service {s['metadata']['name']} selects no pod")

(container,) = spec["template"]["spec"]["containers"]
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
env = {e["name"]: e for e in container["env"]}
for var in ("HA_MODE", "HA_HOSTS", "CACHE_AUTH_TOKEN", "LISTEN_ADDR"):
    need(var in env, f"the container does not set {var}")
need(env["HA_MODE"].get("value") == "true", "HA_MODE must be true")
hosts = env["HA_HOSTS"]["value"].split(",")
need(len(hosts) == spec["replicas"], f"HA_HOSTS lists {len(hosts)} hosts for {spec['replicas']} replicas")
for i, h in enumerate(hosts):
    want = f"http://{sts['metadata']['name']}-{i}.{spec['serviceName']}:{ports['raft']}"
    need(h.strip() == want, f"HA_HOSTS entry {i} is {h}, expected {want} (ordinal order)")
need(env["LISTEN_ADDR"]["value"].endswith(f":{ports['http']}"), "LISTEN_ADDR is not the http port")
ref = env["CACHE_AUTH_TOKEN"].get("valueFrom", {}).get("secretKeyRef", {})
secrets = {s["metadata"]["name"]: s for s in by_kind["Secret"]}
need(ref.get("name") in secrets, "CACHE_AUTH_TOKEN does not come from the Secret")
need(ref.get("key") in secrets.get(ref.get("name"), {}).get("stringData", {}), "the Secret has no such key")
need(container["readinessProbe"]["httpGet"]["path"] == "/ready", "the readiness probe must be GET /ready")
need(container["livenessProbe"]["httpGet"]["path"] == "/health", "the liveness probe must be GET /health")
if "DATA_DIR" in env:
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    need(env["DATA_DIR"]["value"] in mounts, "DATA_DIR is not a mounted volume")

(pdb,) = by_kind["PodDisruptionBudget"]
need(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the PodDisruptionBudget selects no pod")
need(pdb["spec"].get("maxUnavailable") == 1, "at most one member may be disrupted at a time")

if shutil.which("kubectl"):
    r = subprocess.run(["kubectl", "kustomize", str(here)], capture_output=True, text=True)
    need(r.returncode == 0, f"kubectl kustomize: {r.stderr}")
    built = [d for d in yaml.safe_load_all(r.stdout) if d]
    need(len(built) == len(docs), f"kubectl kustomize built {len(built)} objects, expected {len(docs)}")
else:
    print("kubectl not found: kubectl kustomize is skipped")

for p in problems:
    print(f"deploy/kubernetes: {p}", file=sys.stderr)
print(f"deploy/kubernetes: {len(docs)} manifests checked, {len(problems)} problems")
sys.exit(1 if problems else 0)
