"""Semantic checks on the rendered compose file and Kubernetes manifests (used by validate-ops.sh).

    ops_checks.py compose RENDERED.json
    ops_checks.py k8s NAME RENDERED.yaml
"""

import base64
import json
import sys
from urllib.parse import urlsplit

import yaml

REQUIRED_ENV = {
    "command-service": {"DATABASE_URL", "AMQP_URL", "HTTP_PORT"},
    "query-service": {"DATABASE_URL", "AMQP_URL", "HTTP_PORT", "COMMAND_SERVICE_URL", "AMQP_PUBLISHER_USER"},
}
# At least one variable of each group: a key source to check tokens, and the query service's own token.
KEY_SOURCE = ("AUTH_JWT_SECRET", "AUTH_JWT_SECRET_FILE", "AUTH_JWKS_FILE")
REQUIRED_ANY = {
    "command-service": [KEY_SOURCE],
    "query-service": [KEY_SOURCE, ("COMMAND_SERVICE_TOKEN", "COMMAND_SERVICE_TOKEN_FILE")],
}
# Variables naming a file that must be mounted from a secret.
FILE_VARS = ("AUTH_JWT_SECRET_FILE", "AUTH_JWKS_FILE", "COMMAND_SERVICE_TOKEN_FILE")
URL_SCHEMES = {
    ("command-service", "DATABASE_URL"): ("postgres://", "postgresql://"),
    ("query-service", "DATABASE_URL"): ("mysql://", "mariadb://"),
    ("command-service", "AMQP_URL"): ("amqp://", "amqps://"),
    ("query-service", "AMQP_URL"): ("amqp://", "amqps://"),
    ("query-service", "COMMAND_SERVICE_URL"): ("http://", "https://"),
}


def service_of(image):
    """Which of our two binaries an image runs, from its repository name."""
    repo = (image or "").rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    return repo if repo in REQUIRED_ENV else None


def check_env(where, service, env, errors):
    missing = sorted(REQUIRED_ENV[service] - {k for k, v in env.items() if v not in (None, "")})
    if missing:
        errors.append(f"{where}: missing {', '.join(missing)}")
    for group in REQUIRED_ANY[service]:
        if not any(env.get(k) not in (None, "") for k in group):
            errors.append(f"{where}: missing one of {', '.join(group)}")
    for (svc, key), schemes in URL_SCHEMES.items():
        value = env.get(key)
        if svc == service and value and not value.startswith(schemes):
            errors.append(f"{where}: {key} should start with {' or '.join(schemes)}")


def amqp_user(env):
    try:
        return urlsplit(env.get("AMQP_URL") or "").username
    except ValueError:
        return None


def check_broker_users(where, envs, errors):
    """One broker user per service; the query service trusts only the command service's."""
    command_user = amqp_user(envs.get("command-service") or {})
    query_env = envs.get("query-service") or {}
    if not command_user or not query_env:
        return
    if query_env.get("AMQP_PUBLISHER_USER") != command_user:
        errors.append(f"{where}: query-service AMQP_PUBLISHER_USER={query_env.get('AMQP_PUBLISHER_USER')} "
                      f"is not the command service's broker user {command_user}")
    if amqp_user(query_env) == command_user:
        errors.append(f"{where}: both services log in to the broker as {command_user}; each needs its own user")


def compose_secret_targets(svc):
    targets = set()
    for secret in svc.get("secrets") or []:
        target = secret.get("target") or secret["source"]
        targets.add(target if target.startswith("/") else f"/run/secrets/{target}")
    return targets


def check_compose(path):
    errors = []
    document = json.load(open(path, encoding="utf-8"))
    services = document["services"]
    defined_secrets = set(document.get("secrets") or {})
    envs = {}
    built = {}
    for name, svc in services.items():
        target = (svc.get("build") or {}).get("args", {}).get("SERVICE") or service_of(svc.get("image"))
        if not target:
            continue
        built[name] = target
        env = svc.get("environment") or {}
        check_env(f"compose service {name} ({target})", target, env, errors)
        if name == target:
            envs[name] = env
        mounted = compose_secret_targets(svc)
        for var in FILE_VARS:
            if env.get(var) and env[var] not in mounted:
                errors.append(f"compose service {name}: {var}={env[var]} is not a secret mounted in it")
        for secret in svc.get("secrets") or []:
            if secret["source"] not in defined_secrets:
                errors.append(f"compose service {name}: secret {secret['source']} is not defined")
        if not svc.get("read_only"):
            errors.append(f"compose service {name}: read_only should be true")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if cond.get("condition") != "service_healthy":
                errors.append(f"compose service {name}: depends_on {dep} should wait for service_healthy")
            elif "healthcheck" not in services.get(dep, {}) and dep not in built:
                errors.append(f"compose service {name}: depends on {dep}, which has no healthcheck")
    for name in ("command-service", "query-service"):
        if built.get(name) != name:
            errors.append(f"compose: no service {name} built with SERVICE={name}")
    check_broker_users("compose", envs, errors)
    rebuild = [n for n, s in services.items() if s.get("command") == ["rebuild"]]
    if not rebuild:
        errors.append("compose: no one-shot service running `query-service rebuild`")
    for name in rebuild:
        if not services[name].get("profiles"):
            errors.append(f"compose service {name}: should sit behind a profile")
    return errors, f"{len(built)} service(s) built from source"


def config_values(docs):
    values = {}
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ConfigMap":
            values[kind, name] = dict(doc.get("data") or {})
        elif kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
            data.update(doc.get("stringData") or {})
            values[kind, name] = data
    return values


def container_env(container, values, where, errors):
    env = {}
    for source in container.get("envFrom") or []:
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                ref = source[key]["name"]
                if (kind, ref) not in values:
                    errors.append(f"{where}: envFrom {kind} {ref} is not in the rendered output")
                env.update(values.get((kind, ref), {}))
    for var in container.get("env") or []:
        env[var["name"]] = var.get("value", "<from valueFrom>" if "valueFrom" in var else None)
    return env


def check_secret_files(where, container, spec, env, values, errors):
    """Each *_FILE variable names a file inside a volume mounted from a Secret that holds that key."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for var in FILE_VARS:
        path = env.get(var)
        if not path:
            continue
        found = False
        for mount in container.get("volumeMounts") or []:
            base = mount["mountPath"].rstrip("/")
            if mount.get("subPath"):
                key = mount["subPath"] if path == base else None
            else:
                key = path[len(base) + 1:] if path.startswith(base + "/") else None
            if not key:
                continue
            secret = (volumes.get(mount["name"]) or {}).get("secret")
            if not secret:
                errors.append(f"{where}: {var}={path} is mounted from {mount['name']}, which is no Secret volume")
            else:
                keys = {item["path"]: item["key"] for item in secret.get("items") or []}
                data = values.get(("Secret", secret["secretName"]))
                if data is None:
                    errors.append(f"{where}: {var}: Secret {secret['secretName']} is not in the rendered output")
                elif keys.get(key, key) not in data:
                    errors.append(f"{where}: {var}: Secret {secret['secretName']} has no key {keys.get(key, key)}")
            found = True
        if not found:
            errors.append(f"{where}: {var}={path} is in no mounted volume")


def check_pod(where, spec, workload_kind, errors):
    pod_sc = spec.get("securityContext") or {}
    if not pod_sc.get("runAsNonRoot"):
        errors.append(f"{where}: runAsNonRoot should be true")
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        errors.append(f"{where}: seccompProfile should be RuntimeDefault")
    for c in spec["containers"]:
        sc = c.get("securityContext") or {}
        if not sc.get("readOnlyRootFilesystem"):
            errors.append(f"{where}/{c['name']}: readOnlyRootFilesystem should be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{where}/{c['name']}: allowPrivilegeEscalation should be false")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            errors.append(f"{where}/{c['name']}: capabilities should drop ALL")
        res = c.get("resources") or {}
        if not res.get("requests") or not res.get("limits"):
            errors.append(f"{where}/{c['name']}: resource requests and limits are required")
        if workload_kind == "Deployment":
            probes = {p: (c.get(p) or {}).get("httpGet", {}).get("path")
                      for p in ("startupProbe", "livenessProbe", "readinessProbe")}
            if probes["readinessProbe"] != "/health/ready":
                errors.append(f"{where}/{c['name']}: readinessProbe should GET /health/ready")
            for p in ("startupProbe", "livenessProbe"):
                if probes[p] not in ("/health/live", "/health/ready"):
                    errors.append(f"{where}/{c['name']}: {p} should GET a /health endpoint")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def check_hosts(where, env, services, errors):
    """An in-cluster host (no dot, or *.svc[.cluster.local]) must be a Service of the same render."""
    for key in ("DATABASE_URL", "AMQP_URL", "COMMAND_SERVICE_URL"):
        try:
            host = urlsplit(env.get(key) or "").hostname
        except ValueError:
            errors.append(f"{where}: {key} is not a valid URL")
            continue
        if not host:
            continue
        in_cluster = "." not in host or host.endswith((".svc", ".svc.cluster.local"))
        if in_cluster and host.split(".", 1)[0] not in services:
            errors.append(f"{where}: {key} points at {host}, which is no Service of this render")


def check_k8s(name, path):
    errors = []
    docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
    values = config_values(docs)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    services = {d["metadata"]["name"] for d in by_kind.get("Service", [])}
    seen = set()
    envs = {}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for c in spec["containers"]:
            service = service_of(c.get("image"))
            if not service:
                continue
            where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
            seen.add(service)
            env = container_env(c, values, where, errors)
            check_env(f"{where}/{c['name']}", service, env, errors)
            check_secret_files(f"{where}/{c['name']}", c, spec, env, values, errors)
            check_hosts(f"{where}/{c['name']}", env, services, errors)
            if doc["kind"] == "Deployment":
                envs[service] = env
            check_pod(where, spec, doc["kind"], errors)
            if doc["kind"] == "Deployment" and doc["spec"].get("replicas", 1) < 2:
                errors.append(f"{where}: replicas should be at least 2")
            if doc["kind"] == "Deployment" and not spec.get("terminationGracePeriodSeconds"):
                errors.append(f"{where}: terminationGracePeriodSeconds should be set")
    check_broker_users(name, envs, errors)
    for service in REQUIRED_ENV:
        if service not in seen:
            errors.append(f"{name}: no workload runs {service}")
    for service in seen & set(deployments):
        pod_labels = deployments[service]["spec"]["template"]["metadata"]["labels"]
        for kind in ("Service", "PodDisruptionBudget"):
            matching = [d for d in by_kind.get(kind, [])
                        if selects(d["spec"].get("selector") if kind == "PodDisruptionBudget"
                                   else {"matchLabels": d["spec"].get("selector") or {}}, pod_labels)]
            if not matching:
                errors.append(f"{name}: no {kind} selects the {service} pods")
        if not any(h["spec"]["scaleTargetRef"]["name"] == service for h in by_kind.get("HorizontalPodAutoscaler", [])):
            errors.append(f"{name}: no HorizontalPodAutoscaler targets {service}")
        if not any(selects(p["spec"]["podSelector"], pod_labels) and p["spec"].get("egress")
                   for p in by_kind.get("NetworkPolicy", [])):
            errors.append(f"{name}: no NetworkPolicy allows egress from {service}")
    for svc in by_kind.get("Service", []):
        selector = svc["spec"].get("selector") or {}
        matched = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                   and selects({"matchLabels": selector}, d["spec"]["template"]["metadata"]["labels"])]
        if len(matched) != 1:
            errors.append(f"{name}: Service {svc['metadata']['name']} selects {len(matched)} workloads, expected 1")
    summary = f"{len(docs)} objects, workloads for {', '.join(sorted(seen)) or 'none'}"
    return errors, summary


def main(argv):
    if len(argv) >= 3 and argv[1] == "compose":
        errors, summary = check_compose(argv[2])
    elif len(argv) >= 4 and argv[1] == "k8s":
        errors, summary = check_k8s(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for error in errors:
        print(f"  - {error}")
    print(f"  {summary}: {'OK' if not errors else f'{len(errors)} problem(s)'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
