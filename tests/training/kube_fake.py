"""FakeCluster: the slice of the Kubernetes API that the kubernetes launcher calls (BatchV1Api and
CoreV1Api), for tests — no API server can run here.

It keeps the API server's behaviour that the launcher's safety rests on:
- names are unique per kind and namespace: creating a taken name is 409 AlreadyExists, and each call
  is atomic (etcd's compare-and-swap), so of concurrent creates of one name exactly one succeeds;
- a body whose namespace differs from the request's is 400 BadRequest;
- reading or deleting a missing object is 404 NotFound;
- a delete with preconditions (uid, resourceVersion) that the object no longer matches is 409 Conflict
  ("Precondition failed: UID in precondition: …, UID in object meta: …"), and nothing is deleted;
- a create gives the object a new uid, and every write a new resourceVersion;
- objects come back as the client's models (V1Job, V1Service), fresh copies, as the real client returns;
- the garbage collector removes a Service whose owner Job was deleted later, not at once (in a cluster
  it runs asynchronously): `collect_garbage()` runs it.

And the kubelet's expansion of `$(VAR_NAME)` in a container's command, args and env values (`expand`,
`as_run`), as the API reference states it for Container.args/command and EnvVar.value: "Variable
references $(VAR_NAME) are expanded using the previously defined environment variables in the container
and any service environment variables. If a variable cannot be resolved, the reference in the input
string will be unchanged. Double $$ are reduced to a single $, which allows for escaping the
$(VAR_NAME) syntax: i.e. "$$(VAR_NAME)" will produce the string literal "$(VAR_NAME)". Escaped
references will never be expanded, regardless of whether the variable exists or not." The kubelet
resolves the env list in order (each value sees the ones before it; valueFrom is not expanded), then
expands command and args with the result (kubernetes/kubernetes: third_party/forked/golang/expansion,
pkg/kubelet/kubelet_pods.go makeEnvironmentVariables, ExpandContainerCommandAndArgs).
test_var_expansion.py pins `expand` on cases of that rule's own test suite.
"""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

_MODELS = {"job": "V1Job", "service": "V1Service"}


def model(kind: str, body: dict[str, Any]) -> Any:
    """A plain (camelCase) manifest as the client's model, the way the client deserializes responses."""
    return k8s.ApiClient()._ApiClient__deserialize(copy.deepcopy(body), _MODELS[kind])


class FakeCluster:
    """The calls the launcher makes, over one dict of objects keyed by (kind, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Any] = {}
        self.bodies: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.fail_with: int | None = None
        self._versions = itertools.count(1000)
        self._orphans: set[str] = set()  # uids of deleted Jobs whose dependents the GC has yet to remove
        self._lock = threading.RLock()  # one call at a time, as the API server's storage makes them

    # ---- for tests --------------------------------------------------------------------------------------
    def job(self, name: str, namespace: str = "ml") -> Any:
        return self.objects.get(("job", namespace, name))

    def service(self, name: str, namespace: str = "ml") -> Any:
        return self.objects.get(("service", namespace, name))

    def plant(self, kind: str, name: str, labels: dict[str, str], namespace: str = "ml") -> Any:
        """An object someone else created (kubectl, another app) under `name`."""
        body: dict[str, Any] = {"metadata": {"name": name, "namespace": namespace, "labels": labels}}
        if kind == "job":
            body["spec"] = {"parallelism": 1, "template": {}}
        with self._lock:
            return self._store(kind, namespace, body)

    def set_job_status(self, name: str, status: k8s.V1JobStatus, namespace: str = "ml") -> None:
        """The Job controller updating a Job's status: a write, so a new resourceVersion."""
        with self._lock:
            job = self.objects[("job", namespace, name)]
            job.status = status
            job.metadata.resource_version = str(next(self._versions))

    def collect_garbage(self) -> None:
        """The garbage collector: Services owned by a deleted Job go."""
        with self._lock:
            for key, obj in list(self.objects.items()):
                owners = obj.metadata.owner_references or []
                if key[0] == "service" and any(o.uid in self._orphans for o in owners):
                    del self.objects[key]

    # ---- the API ----------------------------------------------------------------------------------------
    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> Any:
        return self._create("job", namespace, body)

    def read_namespaced_job(self, name: str, namespace: str) -> Any:
        return self._read("job", namespace, name)

    def delete_namespaced_job(
        self, name: str, namespace: str, body: k8s.V1DeleteOptions | None = None, propagation_policy: str = ""
    ) -> None:
        self._delete("job", namespace, name, body)

    def create_namespaced_service(self, namespace: str, body: dict[str, Any]) -> Any:
        return self._create("service", namespace, body)

    def read_namespaced_service(self, name: str, namespace: str) -> Any:
        return self._read("service", namespace, name)

    def delete_namespaced_service(
        self, name: str, namespace: str, body: k8s.V1DeleteOptions | None = None, propagation_policy: str = ""
    ) -> None:
        self._delete("service", namespace, name, body)

    # ---- behaviour --------------------------------------------------------------------------------------
    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.fail_with:
            raise ApiException(status=self.fail_with, reason="Forbidden")

    def _store(self, kind: str, namespace: str, body: dict[str, Any]) -> Any:
        obj = model(kind, body)
        obj.metadata.uid = str(uuid.uuid4())
        obj.metadata.resource_version = str(next(self._versions))
        if kind == "job":
            obj.status = k8s.V1JobStatus()
        key = (kind, namespace, obj.metadata.name)
        self.objects[key], self.bodies[key] = obj, copy.deepcopy(body)
        return copy.deepcopy(obj)

    def _create(self, kind: str, namespace: str, body: dict[str, Any]) -> Any:
        name = body["metadata"]["name"]
        with self._lock:
            self._check(f"create {kind} {name}")
            if body["metadata"].get("namespace", namespace) != namespace:
                raise ApiException(status=400, reason="BadRequest")
            if (kind, namespace, name) in self.objects:
                raise ApiException(status=409, reason="AlreadyExists")
            return self._store(kind, namespace, body)

    def _read(self, kind: str, namespace: str, name: str) -> Any:
        with self._lock:
            self._check(f"read {kind} {name}")
            if (kind, namespace, name) not in self.objects:
                raise ApiException(status=404, reason="NotFound")
            return copy.deepcopy(self.objects[(kind, namespace, name)])

    def _delete(self, kind: str, namespace: str, name: str, options: k8s.V1DeleteOptions | None) -> None:
        pre = options.preconditions if options is not None else None
        with self._lock:
            self._check(f"delete {kind} {name}" + (" with preconditions" if pre else ""))
            obj = self.objects.get((kind, namespace, name))
            if obj is None:
                raise ApiException(status=404, reason="NotFound")
            if pre is not None and (
                (pre.uid is not None and pre.uid != obj.metadata.uid)
                or (
                    pre.resource_version is not None and pre.resource_version != obj.metadata.resource_version
                )
            ):
                raise ApiException(status=409, reason="Conflict")  # "Precondition failed: …"
            del self.objects[(kind, namespace, name)]
            if kind == "job":
                self._orphans.add(obj.metadata.uid)


# ---- the kubelet's $(VAR) expansion ------------------------------------------------------------------------
SECRET = "s3cr3t-value"
SECRETS = {"secret-key": SECRET, "access-key": "AKIA-TEST"}


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of one string: `$$` → `$`, `$(NAME)` → env[NAME] when NAME is defined
    (else left as written), any other `$` (a lone one, `$x`, an unclosed `$(`) kept as it is."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$" or i + 1 == len(text):
            out.append(text[i])
            i += 1
        elif text[i + 1] == "$":
            out.append("$")
            i += 2
        elif text[i + 1] == "(" and (end := text.find(")", i + 2)) != -1:
            name = text[i + 2 : end]
            out.append(env.get(name, f"$({name})"))
            i = end + 1
        else:  # `$x`, or `$(` that never closes: the `$` and the next character stay
            out.append(text[i : i + 2])
            i += 2
    return "".join(out)


def container_env(
    container: dict[str, Any], secrets: dict[str, str], fields: dict[str, str]
) -> dict[str, str]:
    """The environment the kubelet gives a container: values expanded in order, valueFrom resolved."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "secretKeyRef" in var["valueFrom"]:
            env[var["name"]] = secrets[var["valueFrom"]["secretKeyRef"]["key"]]
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def as_run(
    container: dict[str, Any], fields: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """command + args and env of a container as its process sees them."""
    env = container_env(container, SECRETS, fields or {})
    argv = [expand(a, env) for a in [*container["command"], *container.get("args", [])]]
    return argv, env


def launcher_on(cluster: FakeCluster) -> Any:
    """A kubernetes launcher (namespace "ml") whose API clients are `cluster`."""
    from reviewstack.training.launchers.kubernetes import KubernetesLauncher
    from reviewstack.training.settings import LauncherSettings

    settings = LauncherSettings(launcher="kubernetes", k8s_namespace="ml", s3_endpoint="minio:9000")
    return KubernetesLauncher(settings, batch=cluster, core=cluster)
