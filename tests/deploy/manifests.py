"""Reading what `helm template` rendered: YAML that refuses duplicate keys,
and one object graph per value set (the Deployment, its pod, container,
Services, Secrets...) that the fact tests query."""

from functools import cached_property

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (YAML allows the parser
    to keep the last one silently; Kubernetes clients differ)."""


def _construct_mapping(loader, node, deep=False):
    keys = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in keys:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        keys.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_all(text):
    """Every non-empty document of a multi-document YAML text."""
    return [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d]


class Problems:
    """Collects every failed fact of one test, so that a run names them all
    instead of stopping at the first."""

    def __init__(self):
        self.found = []

    def check(self, condition, message):
        if not condition:
            self.found.append(message)

    def assert_none(self, where):
        assert not self.found, f"{where}:\n  " + "\n  ".join(self.found)


def hook_of(doc):
    return doc["metadata"].get("annotations", {}).get("helm.sh/hook")


def hardened(problems, pod_spec, where):
    """The pod hardening every pod of the chart must have."""
    check = problems.check
    check(pod_spec.get("automountServiceAccountToken") is False, f"{where}: service account token is mounted")
    psc = pod_spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")
    for c in pod_spec["containers"]:
        sc = c.get("securityContext", {})
        check(sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}: allowPrivilegeEscalation")
        check(sc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}: readOnlyRootFilesystem")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}: capabilities drop ALL")
        check(not sc.get("privileged"), f"{where}/{c['name']}: privileged")
        res = c.get("resources", {})
        check(res.get("requests") and res.get("limits"), f"{where}/{c['name']}: requests and limits")


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def secret_ref(env):
    """The secretKeyRef the database URL is read from, if any."""
    return env.get("USER_SERVICE__STORE__URL", {}).get("valueFrom", {}).get("secretKeyRef")


class Manifests:
    """The objects of one rendering, with the parts the fact tests look at
    named once (the server's pod, its env, the database Secrets...)."""

    def __init__(self, value_set, docs):
        self.value_set = value_set
        self.docs = docs

    def of_kind(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind, suffix=""):
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"{self.value_set}: expected one {kind} named *{suffix}, found {len(found)}"
        return found[0]

    @cached_property
    def deployment(self):
        return self.one("Deployment")

    @property
    def pod_template(self):
        return self.deployment["spec"]["template"]

    @property
    def pod(self):
        return self.pod_template["spec"]

    @property
    def container(self):
        return self.pod["containers"][0]

    @cached_property
    def env(self):
        return env_of(self.container)

    @property
    def selector(self):
        return self.deployment["spec"]["selector"]["matchLabels"]

    @cached_property
    def cports(self):
        """Container port numbers by name."""
        return {p["name"]: p["containerPort"] for p in self.container["ports"]}

    @cached_property
    def mounts(self):
        return {m["name"]: m for m in self.container.get("volumeMounts", [])}

    @cached_property
    def volumes(self):
        return {v["name"]: v for v in self.pod.get("volumes", [])}

    @property
    def config_maps(self):
        """The config file's ConfigMaps (a configFile value renders one)."""
        return [d for d in self.of_kind("ConfigMap") if d["metadata"]["name"].endswith("-config")]

    @property
    def services(self):
        return self.of_kind("Service")

    @cached_property
    def main_services(self):
        return [s for s in self.services if s["spec"].get("clusterIP") != "None"]

    @property
    def service(self):
        """The non-headless Service (a placeholder when there is not one, so
        that the tests report the facts that follow from it too)."""
        if self.main_services:
            return self.main_services[0]
        return {"metadata": {"name": "", "labels": {}}, "spec": {"ports": []}}

    @cached_property
    def ports(self):
        return {p["name"]: p for p in self.service["spec"]["ports"]}

    @property
    def tls(self):
        return "USER_SERVICE__TLS__CERT_FILE" in self.env

    @property
    def postgres(self):
        return "USER_SERVICE__STORE__URL" in self.env

    @property
    def ref(self):
        """Where the pods read the database URL (None on the memory store)."""
        return secret_ref(self.env) if self.postgres else None

    @property
    def jobs(self):
        return self.of_kind("Job")

    @cached_property
    def secrets(self):
        """The database Secrets (the JWT Secret is checked on its own)."""
        return [d for d in self.of_kind("Secret") if d["metadata"]["name"].endswith(("-db", "-db-migrate"))]

    @property
    def release_secrets(self):
        return [d for d in self.secrets if not hook_of(d)]

    @property
    def hook_secrets(self):
        return [d for d in self.secrets if hook_of(d)]

    @property
    def jwt_volume(self):
        return self.volumes.get("jwt-secret", {}).get("secret", {})

    @property
    def jwt_secrets(self):
        return [d for d in self.of_kind("Secret") if d["metadata"]["name"] == self.jwt_volume.get("secretName")]

    @property
    def test_pods(self):
        return [d for d in self.of_kind("Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
