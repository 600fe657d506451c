"""Semantic checks on the rendered compose file, Kubernetes manifests and alert rules (used by
validate-ops.sh), and the generator of the HA overlay's PrometheusRule.

    ops_checks.py compose RENDERED.json
    ops_checks.py k8s NAME RENDERED.yaml
    ops_checks.py split RENDERED.yaml SCHEMA_CHECKED.yaml [LIST]   (custom resources left out and listed)
    ops_checks.py alerts RULES.yml RUNBOOKS.md
    ops_checks.py prometheus-rule RULES.yml >k8s/overlays/ha/prometheus-rule.yaml
"""

import base64
import hashlib
import json
import re
import sys
from urllib.parse import unquote, urlsplit

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


# Custom resources of the operators the HA overlay relies on. The offline Kubernetes schemas do not
# cover them: `split` leaves them out of the schema validation (and says so), `check_k8s` checks
# what this project depends on in them. Any other kind without a schema fails validation.
CUSTOM_KINDS = {
    ("rabbitmq.com", "RabbitmqCluster"): "RabbitMQ Cluster Operator",
    ("postgresql.cnpg.io", "Cluster"): "CloudNativePG",
    ("mysql.oracle.com", "InnoDBCluster"): "MySQL Operator for Kubernetes",
    ("keda.sh", "ScaledObject"): "KEDA",
    ("keda.sh", "TriggerAuthentication"): "KEDA",
    ("monitoring.coreos.com", "PodMonitor"): "Prometheus Operator",
    ("monitoring.coreos.com", "PrometheusRule"): "Prometheus Operator",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "StorageClass",
                  "PriorityClass"}
# Characters a password may use where it is spliced into a URL unescaped ($(VAR) expansion).
URL_SAFE = re.compile(r"^[A-Za-z0-9._~-]+$")


def group_kind(doc):
    group = doc.get("apiVersion", "").rpartition("/")[0]
    return group, doc.get("kind")


def namespace_of(doc):
    return (doc.get("metadata") or {}).get("namespace")


def config_values(docs):
    """ConfigMap and Secret data by (kind, namespace, name)."""
    values = {}
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ConfigMap":
            values[kind, namespace_of(doc), name] = dict(doc.get("data") or {})
        elif kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
            data.update(doc.get("stringData") or {})
            values[kind, namespace_of(doc), name] = data
    return values


def expand(value, env, where, errors):
    """Kubernetes' $(VAR) expansion from the variables defined before; a spliced secret must be URL-safe."""
    def substitute(match):
        name = match.group(1)
        if name not in env:
            errors.append(f"{where}: $({name}) refers to no variable defined before it")
            return match.group(0)
        if "://" in value and not URL_SAFE.match(env[name] or ""):
            errors.append(f"{where}: $({name}) goes into a URL unescaped; use only letters, digits and -._~ in it")
        return env[name] or ""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", substitute, value)


def container_env(container, namespace, values, where, errors):
    env = {}
    for source in container.get("envFrom") or []:
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                ref = source[key]["name"]
                if (kind, namespace, ref) not in values:
                    errors.append(f"{where}: envFrom {kind} {ref} is not in the rendered output")
                env.update(values.get((kind, namespace, ref), {}))
    for var in container.get("env") or []:
        if "value" in var:
            env[var["name"]] = expand(var["value"], env, f"{where} {var['name']}", errors)
            continue
        ref = (var.get("valueFrom") or {}).get("secretKeyRef") or (var.get("valueFrom") or {}).get("configMapKeyRef")
        kind = "Secret" if "secretKeyRef" in (var.get("valueFrom") or {}) else "ConfigMap"
        if ref is None:
            env[var["name"]] = "<from valueFrom>" if "valueFrom" in var else None
        elif ref["key"] not in values.get((kind, namespace, ref["name"]), {}):
            errors.append(f"{where}: {var['name']}: {kind} {ref['name']} with key {ref['key']} is not in the rendered output")
            env[var["name"]] = None
        else:
            env[var["name"]] = values[kind, namespace, ref["name"]][ref["key"]]
    return env


def check_secret_files(where, container, spec, namespace, env, values, errors):
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
                data = values.get(("Secret", namespace, secret["secretName"]))
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


def operator_services(docs):
    """The Services each operator creates for its custom resource: (namespace, name) -> the resource."""
    made = {}
    for doc in docs:
        name, namespace = doc["metadata"]["name"], namespace_of(doc)
        names = {
            "Cluster": [f"{name}-rw", f"{name}-ro", f"{name}-r"],
            "RabbitmqCluster": [name, f"{name}-nodes"],
            "InnoDBCluster": [name, f"{name}-instances"],
        }.get(doc["kind"]) if group_kind(doc) in CUSTOM_KINDS else None
        for service in names or []:
            made[namespace, service] = doc
    return made


def url_target(url, namespace, services):
    """The (namespace, Service) an in-cluster URL points at, or None for an external host."""
    host = urlsplit(url).hostname
    if not host:
        return None
    labels = host.split(".")
    if len(labels) == 1:
        return namespace, labels[0]
    if host.endswith((".svc", ".svc.cluster.local")) and len(labels) >= 3:
        return labels[1], labels[0]
    return None


def check_hosts(where, env, namespace, services, errors):
    """An in-cluster host (no dot, or NAME.NAMESPACE.svc[.cluster.local]) must be a Service of the same render."""
    for key in ("DATABASE_URL", "AMQP_URL", "COMMAND_SERVICE_URL"):
        try:
            target = url_target(env.get(key) or "", namespace, services)
        except ValueError:
            errors.append(f"{where}: {key} is not a valid URL")
            continue
        if target and target not in services:
            errors.append(f"{where}: {key} points at {target[1]} in namespace {target[0]}, "
                          f"which is no Service of this render (nor one an operator here creates)")


def rabbit_password_matches(password_hash, password):
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt(4) + sha256(salt + password))."""
    try:
        raw = base64.b64decode(password_hash)
    except ValueError:
        return False
    return len(raw) == 36 and hashlib.sha256(raw[:4] + password.encode()).digest() == raw[4:]


def check_broker_credentials(name, definitions, logins, errors):
    """Each (where, user, password, tag) login exists in the broker's definitions with that password."""
    users = {u["name"]: u for u in definitions.get("users") or []}
    for where, user, password, tag in logins:
        entry = users.get(user)
        if entry is None:
            errors.append(f"{name}: {where}: broker user {user} is not in the broker's definitions.json")
        elif entry.get("hashing_algorithm", "rabbit_password_hashing_sha256") != "rabbit_password_hashing_sha256":
            errors.append(f"{name}: {where}: cannot check {user}'s password ({entry.get('hashing_algorithm')})")
        elif not rabbit_password_matches(entry.get("password_hash", ""), password or ""):
            errors.append(f"{name}: {where}: {user}'s password does not match its password_hash in definitions.json")
        elif tag and tag not in (entry.get("tags") or []):
            errors.append(f"{name}: {where}: broker user {user} lacks the tag {tag}")


def definitions_of(doc, values):
    """The definitions.json a broker resource loads (local StatefulSet or RabbitmqCluster), if any."""
    spec = doc.get("spec") or {}
    if doc["kind"] == "RabbitmqCluster":
        spec = ((((spec.get("override") or {}).get("statefulSet") or {}).get("spec") or {}).get("template") or {})
        pod = spec.get("spec") or {}
    elif doc["kind"] == "StatefulSet":
        pod = spec["template"]["spec"]
    else:
        return None
    for volume in pod.get("volumes") or []:
        secret = (volume.get("secret") or {}).get("secretName")
        data = values.get(("Secret", namespace_of(doc), secret)) or {}
        if "definitions.json" in data:
            return json.loads(data["definitions.json"])
    return None


def require_secret(name, where, values, namespace, secret, keys, errors):
    data = values.get(("Secret", namespace, secret))
    if data is None:
        errors.append(f"{name}: {where}: Secret {secret} is not in namespace {namespace} of this render")
        return {}
    missing = [k for k in keys if k not in data]
    if missing:
        errors.append(f"{name}: {where}: Secret {secret} lacks {', '.join(missing)}")
    return data


def check_custom_resources(name, docs, values, errors):
    """What this project relies on in the operators' resources (their schemas are not available here)."""
    for doc in docs:
        kind, ns, spec = doc["kind"], namespace_of(doc), doc.get("spec") or {}
        if group_kind(doc) not in CUSTOM_KINDS:
            continue
        where = f"{kind} {doc['metadata']['name']}"
        if kind == "RabbitmqCluster":
            replicas = spec.get("replicas", 1)
            if replicas < 3 or replicas % 2 == 0:
                errors.append(f"{name}: {where}: replicas should be odd and at least 3 (quorum queues), not {replicas}")
            plugins = (spec.get("rabbitmq") or {}).get("additionalPlugins") or []
            if "rabbitmq_consistent_hash_exchange" not in plugins:
                errors.append(f"{name}: {where}: the plugin rabbitmq_consistent_hash_exchange is not enabled")
            admin = ((spec.get("secretBackend") or {}).get("externalSecret") or {}).get("name")
            definitions = definitions_of(doc, values)
            if definitions is not None and not admin:
                errors.append(f"{name}: {where}: imports definitions but names no secretBackend.externalSecret: "
                              "the operator's generated default user would not exist")
            if admin:
                data = require_secret(name, where, values, ns, admin,
                                      ("username", "password", "default_user.conf"), errors)
                conf = dict(re.findall(r"^\s*(default_user|default_pass)\s*=\s*(\S+)\s*$",
                                       data.get("default_user.conf", ""), re.M))
                if data and conf != {"default_user": data.get("username"), "default_pass": data.get("password")}:
                    errors.append(f"{name}: {where}: Secret {admin}'s default_user.conf disagrees with its username/password")
                if definitions is not None and data:
                    check_broker_credentials(name, definitions, [(f"{where} administrator", data.get("username"),
                                                                  data.get("password"), "administrator")], errors)
        elif kind == "Cluster":
            if spec.get("instances", 1) < 3:
                errors.append(f"{name}: {where}: instances should be at least 3")
            sync = (spec.get("postgresql") or {}).get("synchronous") or {}
            legacy = spec.get("minSyncReplicas", 0)
            if sync:
                if sync.get("number", 0) < 1 or sync.get("dataDurability", "required") != "required":
                    errors.append(f"{name}: {where}: synchronous replication should wait for at least one standby "
                                  "(number >= 1, dataDurability: required)")
            elif legacy < 1:
                errors.append(f"{name}: {where}: no synchronous replication: an acknowledged commit could be lost "
                              "in a failover")
            initdb = (spec.get("bootstrap") or {}).get("initdb") or {}
            if (initdb.get("secret") or {}).get("name"):
                data = require_secret(name, where, values, ns, initdb["secret"]["name"], ("username", "password"),
                                      errors)
                if data and initdb.get("owner") and data.get("username") != initdb["owner"]:
                    errors.append(f"{name}: {where}: initdb owner {initdb['owner']} is not the secret's username "
                                  f"{data.get('username')}")
        elif kind == "InnoDBCluster":
            instances = spec.get("instances", 1)
            if instances < 3 or instances % 2 == 0:
                errors.append(f"{name}: {where}: instances should be odd and at least 3, not {instances}")
            if (spec.get("router") or {}).get("instances", 1) < 2:
                errors.append(f"{name}: {where}: run at least 2 routers")
            require_secret(name, where, values, ns, spec.get("secretName"),
                           ("rootUser", "rootHost", "rootPassword"), errors)
        elif kind == "ScaledObject":
            triggers = spec.get("triggers") or []
            if not triggers:
                errors.append(f"{name}: {where}: no triggers")
            if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
                errors.append(f"{name}: {where}: minReplicaCount is above maxReplicaCount")
            for trigger in triggers:
                auth = (trigger.get("authenticationRef") or {}).get("name")
                if auth and not any(d["kind"] == "TriggerAuthentication" and d["metadata"]["name"] == auth
                                    and namespace_of(d) == ns for d in docs):
                    errors.append(f"{name}: {where}: TriggerAuthentication {auth} is not in this render")
        elif kind == "TriggerAuthentication":
            for ref in spec.get("secretTargetRef") or []:
                require_secret(name, where, values, ns, ref["name"], (ref["key"],), errors)


def serves(target, broker):
    """Whether a Service (or the custom resource behind an operator's Service) leads to the broker."""
    if target is None or namespace_of(target) != namespace_of(broker):
        return False
    if target is broker:
        return True
    selector = (target.get("spec") or {}).get("selector") if target["kind"] == "Service" else None
    labels = (((broker.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
    return bool(selector) and selects({"matchLabels": selector}, labels)


def broker_logins(name, docs, values, envs, services, errors):
    """The logins to each in-cluster broker whose definitions this render holds, checked against them."""
    for doc in docs:
        definitions = definitions_of(doc, values)
        if definitions is None:
            continue
        logins = []
        for (where, namespace), env in envs.items():
            url = env.get("AMQP_URL") or ""
            target = url_target(url, namespace, services)
            if target and serves(services.get(target), doc):
                parts = urlsplit(url)
                logins.append((f"{where} AMQP_URL", unquote(parts.username or ""), unquote(parts.password or ""), None))
        for auth in docs:
            if auth["kind"] != "TriggerAuthentication":
                continue
            refs = {r["parameter"]: r for r in (auth.get("spec") or {}).get("secretTargetRef") or []}
            if {"host", "username", "password"} <= refs.keys():
                get = {p: (values.get(("Secret", namespace_of(auth), refs[p]["name"])) or {}).get(refs[p]["key"])
                       for p in ("host", "username", "password")}
                target = url_target(get["host"] or "", namespace_of(auth), services)
                if target and serves(services.get(target), doc):
                    logins.append((f"TriggerAuthentication {auth['metadata']['name']}", get["username"],
                                   get["password"], "monitoring"))
        check_broker_credentials(name, definitions, logins, errors)


def check_autoscaling(name, service, by_kind, errors):
    """One autoscaler per service: an HPA (CPU) or a KEDA ScaledObject, never both on one Deployment."""
    hpas = [h for h in by_kind.get("HorizontalPodAutoscaler", []) if h["spec"]["scaleTargetRef"]["name"] == service]
    scaled = [s for s in by_kind.get("ScaledObject", []) if s["spec"]["scaleTargetRef"]["name"] == service]
    if not hpas and not scaled:
        errors.append(f"{name}: no HorizontalPodAutoscaler or ScaledObject targets {service}")
    elif hpas and scaled:
        errors.append(f"{name}: both an HPA and a ScaledObject (which makes its own HPA) target {service}")


def check_alert_rules_shipped(name, by_kind, values, errors):
    """A PrometheusRule in the render carries exactly the rules of the ConfigMap bank-alert-rules."""
    maps = [d for d in by_kind.get("ConfigMap", []) if d["metadata"]["name"] == "bank-alert-rules"]
    for rule in by_kind.get("PrometheusRule", []):
        if not maps:
            errors.append(f"{name}: PrometheusRule {rule['metadata']['name']} but no ConfigMap bank-alert-rules to compare")
            continue
        source = yaml.safe_load(maps[0]["data"]["alerts.yml"])
        if (rule.get("spec") or {}).get("groups") != source.get("groups"):
            errors.append(f"{name}: PrometheusRule {rule['metadata']['name']} differs from k8s/base/monitoring/alerts.yml; "
                          "regenerate it: python3 .ci/ops_checks.py prometheus-rule k8s/base/monitoring/alerts.yml "
                          ">k8s/overlays/ha/prometheus-rule.yaml")


def check_k8s(name, path):
    errors = []
    docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
    values = config_values(docs)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
        if doc["kind"] not in CLUSTER_SCOPED and not namespace_of(doc):
            errors.append(f"{name}: {doc['kind']} {doc['metadata']['name']} has no namespace (it would land in the "
                          "current context's)")
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    services = {(namespace_of(d), d["metadata"]["name"]): d for d in by_kind.get("Service", [])}
    services.update(operator_services(docs))
    ha = any(group_kind(d) in CUSTOM_KINDS and d["kind"] in ("RabbitmqCluster", "Cluster", "InnoDBCluster")
             for d in docs)
    seen = set()
    envs = {}
    service_envs = {}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        namespace = namespace_of(doc)
        for c in spec["containers"]:
            service = service_of(c.get("image"))
            if not service:
                continue
            where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
            seen.add(service)
            env = container_env(c, namespace, values, where, errors)
            envs[f"{doc['kind']} {doc['metadata']['name']}", namespace] = env
            check_env(f"{where}/{c['name']}", service, env, errors)
            check_secret_files(f"{where}/{c['name']}", c, spec, namespace, env, values, errors)
            check_hosts(f"{where}/{c['name']}", env, namespace, services, errors)
            if doc["kind"] == "Deployment":
                service_envs[service] = env
            check_pod(where, spec, doc["kind"], errors)
            replicas = doc["spec"].get("replicas", 1)
            if doc["kind"] == "Deployment" and replicas < (3 if ha else 2):
                errors.append(f"{where}: replicas should be at least {3 if ha else 2}")
            if doc["kind"] == "Deployment" and not spec.get("terminationGracePeriodSeconds"):
                errors.append(f"{where}: terminationGracePeriodSeconds should be set")
            if doc["kind"] == "Deployment" and ha and not any(
                    t.get("topologyKey") == "kubernetes.io/hostname" and t.get("whenUnsatisfiable") == "DoNotSchedule"
                    for t in spec.get("topologySpreadConstraints") or []):
                errors.append(f"{where}: with replicated servers, spread the replicas one per node "
                              "(hostname, DoNotSchedule)")
    check_broker_users(name, service_envs, errors)
    broker_logins(name, docs, values, envs, services, errors)
    check_custom_resources(name, docs, values, errors)
    check_alert_rules_shipped(name, by_kind, values, errors)
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
        check_autoscaling(name, service, by_kind, errors)
        if not any(selects(p["spec"]["podSelector"], pod_labels) and p["spec"].get("egress")
                   for p in by_kind.get("NetworkPolicy", [])):
            errors.append(f"{name}: no NetworkPolicy allows egress from {service}")
    for svc in by_kind.get("Service", []):
        selector = svc["spec"].get("selector") or {}
        matched = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                   and selects({"matchLabels": selector}, d["spec"]["template"]["metadata"]["labels"])]
        if len(matched) != 1:
            errors.append(f"{name}: Service {svc['metadata']['name']} selects {len(matched)} workloads, expected 1")
    custom = sorted({d["kind"] for d in docs if group_kind(d) in CUSTOM_KINDS})
    summary = f"{len(docs)} objects, workloads for {', '.join(sorted(seen)) or 'none'}"
    if custom:
        summary += f", custom resources checked here: {', '.join(custom)}"
    return errors, summary


def split(path, out, listing=None):
    """Writes the objects the offline schemas cover to OUT; lists the custom resources left out
    (and appends their kinds, one a line, to LISTING)."""
    docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
    kept, skipped = [], {}
    for doc in docs:
        key = group_kind(doc)
        if key in CUSTOM_KINDS:
            label = f"{doc['kind']} ({doc['apiVersion']}, {CUSTOM_KINDS[key]})"
            skipped[label] = skipped.get(label, 0) + 1
        else:
            kept.append(doc)
    with open(out, "w", encoding="utf-8") as handle:
        yaml.safe_dump_all(kept, handle, sort_keys=False)
    if listing:
        with open(listing, "a", encoding="utf-8") as handle:
            handle.writelines(f"{label}\n" for label in sorted(skipped))
    if skipped:
        listed = ", ".join(f"{count} {label}" for label, count in sorted(skipped.items()))
        return [], f"{len(kept)} objects to validate; NOT validated here (no offline schema): {listed}"
    return [], f"{len(kept)} objects to validate, no custom resources"


def anchors(markdown):
    """GitHub's heading anchors of a Markdown document."""
    found = set()
    for line in open(markdown, encoding="utf-8"):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower().replace("`", ""))
            found.add(text.replace(" ", "-"))
    return found


def check_alerts(path, runbooks):
    """Every alert has a `for`, a severity, a summary, a description and a runbook that exists."""
    errors = []
    known = anchors(runbooks)
    count = 0
    for group in yaml.safe_load(open(path, encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            count += 1
            alert, labels, notes = rule["alert"], rule.get("labels") or {}, rule.get("annotations") or {}
            if not rule.get("for"):
                errors.append(f"{alert}: no `for:` (one bad scrape would page)")
            if labels.get("severity") not in ("warning", "critical"):
                errors.append(f"{alert}: severity should be warning or critical, not {labels.get('severity')}")
            for key in ("summary", "description", "runbook_url"):
                if not notes.get(key):
                    errors.append(f"{alert}: no {key} annotation")
            page, _, anchor = (notes.get("runbook_url") or "").partition("#")
            if page and page != runbooks:
                errors.append(f"{alert}: runbook_url should point into {runbooks}, not {page}")
            elif anchor not in known:
                errors.append(f"{alert}: {runbooks} has no section #{anchor}")
    return errors, f"{count} alerts, each with for, severity, summary, description and a runbook in {runbooks}"


class _Literal(str):
    pass


def prometheus_rule(path):
    """The PrometheusRule of the HA overlay, generated from the plain rule file."""
    yaml.add_representer(_Literal, lambda dumper, data: dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style="|"), Dumper=yaml.SafeDumper)

    def literal(node):
        if isinstance(node, dict):
            return {k: literal(v) for k, v in node.items()}
        if isinstance(node, list):
            return [literal(v) for v in node]
        if isinstance(node, str) and "\n" in node:
            return _Literal(node)
        return node

    rules = yaml.safe_load(open(path, encoding="utf-8"))
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "bank-alerts",
            "namespace": "bank",
            "labels": {"app.kubernetes.io/component": "alert-rules"},
        },
        "spec": {"groups": literal(rules["groups"])},
    }
    header = (f"# Generated from {path} by `python3 .ci/ops_checks.py prometheus-rule {path}`:\n"
              "# do not edit; CI fails when it differs from that file. Add the labels your Prometheus's\n"
              "# ruleSelector expects (kube-prometheus-stack: `release: <its release name>`).\n")
    return header + yaml.safe_dump(document, sort_keys=False, width=110, allow_unicode=True)


def main(argv):
    if len(argv) >= 3 and argv[1] == "compose":
        errors, summary = check_compose(argv[2])
    elif len(argv) >= 4 and argv[1] == "k8s":
        errors, summary = check_k8s(argv[2], argv[3])
    elif len(argv) >= 4 and argv[1] == "split":
        errors, summary = split(argv[2], argv[3], argv[4] if len(argv) >= 5 else None)
    elif len(argv) >= 4 and argv[1] == "alerts":
        errors, summary = check_alerts(argv[2], argv[3])
    elif len(argv) >= 3 and argv[1] == "prometheus-rule":
        sys.stdout.write(prometheus_rule(argv[2]))
        return 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for error in errors:
        print(f"  - {error}")
    print(f"  {summary}: {'OK' if not errors else f'{len(errors)} problem(s)'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
