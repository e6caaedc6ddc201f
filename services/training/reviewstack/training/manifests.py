"""Kubernetes objects of a training run, as pure functions: settings + run in, manifests out.

The controller creates what `render_run` returns; `reviewstack train render-job` prints it; and the
kubectl-only manifests in charts/training-job-kubectl/ are written by `render_manifests.py` from
`render_kubectl_job` / `render_cronjob` — one renderer, so they cannot drift apart.

Shape of a run's Job (every choice has its reason next to it below):
- one pod per node; `nvidia.com/gpu` limits; the GPU pool's nodeSelector and tolerations;
- /dev/shm as a memory emptyDir (the 64 MiB default kills data loaders and NCCL), /scratch for HOME;
- S3 credentials from a Secret, the endpoint from the controller's own settings;
- `backoffLimit`: a crashed pod is replaced and the run resumes from its latest checkpoint; a
  podFailurePolicy fails the Job at once on exit status 2 (bad spec or input) and does not count
  evictions/preemptions (DisruptionTarget) as failures;
- `torchrun --nproc-per-node=<gpus>` when a pod runs several processes; several nodes make an Indexed
  Job (one completion index per node = the torchrun node rank) with a headless Service whose DNS
  name of pod 0 is the rendezvous address.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client as k8s

from reviewstack.training.settings import LauncherSettings
from reviewstack.training.specs import Resources

CONTAINER = "trainer"
APP_LABELS = {"app.kubernetes.io/name": "review-stack", "app.kubernetes.io/component": "training-job"}
RUN_LABEL = "review-stack/run-id"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set on every Job pod by Kubernetes ≥ 1.27
SPEC_ANNOTATION = "review-stack/spec-uri"
SCRATCH = "/scratch"
EXIT_MARKER = f"{SCRATCH}/.train-exit-2"
KUBECTL_RUN_NAME = "my-run"
MAX_JOB_NAME = 52  # leaves room for "-<index>" in Indexed pod hostnames and "rdzv-" in the Service

# The container's entry script (POSIX sh). Single process: run the job. Several: torchrun, which turns
# every worker failure into exit status 1 — so each worker leaves a marker when it exits 2, and the
# script exits 2 after all, for the podFailurePolicy. sh runs as PID 1, which ignores SIGTERM unless
# trapped: the trap passes it on, so the job checkpoints before the pod stops.
POD_SCRIPT = r"""set -u
marker="${TRAIN_EXIT_MARKER:-/tmp/reviewstack-train-exit-2}"
rm -f "$marker"
command="${TRAIN_COMMAND:-reviewstack-train}"
if [ "${NNODES:-1}" -gt 1 ] || [ "${NPROC_PER_NODE:-1}" -gt 1 ]; then
  if [ "${NNODES:-1}" -gt 1 ]; then
    rdzv="--nnodes=$NNODES --node-rank=${JOB_COMPLETION_INDEX:-0}"
    rdzv="$rdzv --master-addr=$MASTER_ADDR --master-port=$MASTER_PORT"
  else
    rdzv="--standalone"
  fi
  torchrun $rdzv --nproc-per-node="${NPROC_PER_NODE:-1}" \
    --shutdown-timeout="${TORCHRUN_SHUTDOWN_TIMEOUT:-30}" --no-python \
    sh -c 'm="$1"; shift; "$@"; rc=$?; if [ "$rc" -eq 2 ]; then : > "$m"; fi; exit "$rc"' \
    worker "$marker" "$command" "$@" &
else
  "$command" "$@" &
fi
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"
rc=$?
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  rc=$?
done
if [ "$rc" -ne 0 ] && [ -f "$marker" ]; then
  rc=2
fi
exit "$rc"
"""


@dataclass(frozen=True)
class JobTemplate:
    """Everything about a run's pods that is not the run itself (from LauncherSettings)."""

    image: str = "review-stack/training-job:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    namespace: str = "default"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    s3_secret: str = "review-stack-s3"
    s3_access_key_field: str = "access-key"
    s3_secret_key_field: str = "secret-key"
    store_env: dict[str, str] = field(default_factory=dict)  # REVIEWSTACK_S3_ENDPOINT …, not secrets
    service_account: str = ""
    cpu: str = ""
    memory: str = ""
    shm_size: str = "64Gi"
    scratch_size: str = ""
    backoff_limit: int = 3
    active_deadline_s: int | None = None
    ttl_after_finished_s: int | None = None
    termination_grace_s: int = 120
    rdzv_port: int = 29500
    run_as_user: int | None = 1000
    priority_class: str = ""
    managed_by: str = "reviewstack-training"

    @classmethod
    def from_settings(cls, s: LauncherSettings, namespace: str | None = None) -> JobTemplate:
        store_env = {"REVIEWSTACK_S3_SECURE": "true" if s.s3_secure else "false"}
        if s.s3_endpoint:
            store_env["REVIEWSTACK_S3_ENDPOINT"] = s.s3_endpoint
        if s.s3_region:
            store_env["REVIEWSTACK_S3_REGION"] = s.s3_region
        return cls(
            image=s.k8s_image,
            image_pull_policy=s.k8s_image_pull_policy,
            image_pull_secrets=tuple(s.k8s_image_pull_secrets),
            namespace=namespace or s.k8s_namespace or "default",
            node_selector=dict(s.k8s_node_selector),
            tolerations=tuple(t.to_k8s() for t in s.k8s_tolerations),
            s3_secret=s.k8s_s3_secret,
            s3_access_key_field=s.k8s_s3_access_key_field,
            s3_secret_key_field=s.k8s_s3_secret_key_field,
            store_env=store_env,
            service_account=s.k8s_service_account,
            cpu=s.k8s_cpu,
            memory=s.k8s_memory,
            shm_size=s.k8s_shm_size,
            scratch_size=s.k8s_scratch_size,
            backoff_limit=s.k8s_backoff_limit,
            active_deadline_s=s.k8s_active_deadline_s,
            ttl_after_finished_s=s.k8s_ttl_after_finished_s,
            termination_grace_s=s.k8s_termination_grace_s,
            rdzv_port=s.k8s_rdzv_port,
            run_as_user=s.k8s_run_as_user,
            priority_class=s.k8s_priority_class,
        )


def job_name(run_id: str) -> str:
    """The Job of a run: the run id itself, shortened (with a hash, to stay unique) when too long."""
    if len(run_id) <= MAX_JOB_NAME:
        return run_id
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"{run_id[: MAX_JOB_NAME - 9].rstrip('-')}-{digest}"


def service_name(job: str) -> str:
    """The headless rendezvous Service of a multi-node Job (a Service name must start with a letter)."""
    return f"rdzv-{job}"


def literal(value: str) -> str:
    """`value` escaped for a container's `command`, `args` or env `value`, where Kubernetes expands
    `$(VAR)` from the container's environment (secrets included) and reads `$$` as `$`. Doubling every
    `$` makes the expansion give back exactly `value`: a user's S3 prefix holding
    `$(REVIEWSTACK_S3_SECRET_KEY)` must stay that text, not become the secret in the pod's log."""
    return value.replace("$", "$$")


def _env(name: str, value: str) -> k8s.V1EnvVar:
    """A plain env var; its value is meant literally (see `literal`)."""
    return k8s.V1EnvVar(name=name, value=literal(value))


def _container_env(
    template: JobTemplate, resources: Resources, master_addr: str, extra: list[k8s.V1EnvVar]
) -> list[k8s.V1EnvVar]:
    env = [
        *extra,
        _env("NNODES", str(resources.nodes)),
        _env("NPROC_PER_NODE", str(max(resources.gpus_per_node, 1))),
        _env("MASTER_ADDR", master_addr),
        _env("MASTER_PORT", str(template.rdzv_port)),
        _env("TRAIN_EXIT_MARKER", EXIT_MARKER),
        # torchrun kills workers this long after passing SIGTERM on (its own default, 30 s, is shorter than
        # an accumulated 12k-token step plus a checkpoint); the kubelet's grace period bounds it
        _env("TORCHRUN_SHUTDOWN_TIMEOUT", str(max(template.termination_grace_s - 15, 10))),
        # non-root with a read-only home in most images: caches (HF, torch, Triton, DeepSpeed ops) go here
        _env("HOME", SCRATCH),
        _env("TMPDIR", SCRATCH),
        _env("PYTHONUNBUFFERED", "1"),  # `kubectl logs` shows progress as it happens
        _env("REVIEWSTACK_LOG_FORMAT", "json"),
    ]
    env += [_env(k, v) for k, v in sorted(template.store_env.items())]
    if template.s3_secret:
        for var, key in (
            ("REVIEWSTACK_S3_ACCESS_KEY", template.s3_access_key_field),
            ("REVIEWSTACK_S3_SECRET_KEY", template.s3_secret_key_field),
        ):
            ref = k8s.V1SecretKeySelector(name=template.s3_secret, key=key)
            env.append(k8s.V1EnvVar(name=var, value_from=k8s.V1EnvVarSource(secret_key_ref=ref)))
    return env


def _pod_spec(
    template: JobTemplate,
    resources: Resources,
    args: list[str],
    env: list[k8s.V1EnvVar],
    subdomain: str | None,
) -> k8s.V1PodSpec:
    gpus = resources.gpus_per_node
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    if template.cpu:
        requests["cpu"] = template.cpu
    if template.memory:  # request = limit: a training pod must not be the first one the node evicts
        requests["memory"] = limits["memory"] = template.memory
    container = k8s.V1Container(
        name=CONTAINER,
        image=template.image,
        image_pull_policy=template.image_pull_policy,
        command=["sh", "-c", POD_SCRIPT, "train"],
        # a failed container's last log lines become its termination message (`kubectl describe pod`)
        termination_message_policy="FallbackToLogsOnError",
        args=args,
        env=env,
        resources=k8s.V1ResourceRequirements(limits=limits or None, requests=requests or None),
        volume_mounts=[
            k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
            k8s.V1VolumeMount(name="scratch", mount_path=SCRATCH),
        ],
        ports=[k8s.V1ContainerPort(name="rdzv", container_port=template.rdzv_port)] if subdomain else None,
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
        ),
    )
    return k8s.V1PodSpec(
        containers=[container],
        restart_policy="Never",  # the Job replaces failed pods (and podFailurePolicy requires Never)
        subdomain=subdomain,
        node_selector=(template.node_selector or None) if gpus else None,
        tolerations=([_toleration(t) for t in template.tolerations] or None) if gpus else None,
        service_account_name=template.service_account or None,
        priority_class_name=template.priority_class or None,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=n) for n in template.image_pull_secrets] or None,
        termination_grace_period_seconds=template.termination_grace_s,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=template.run_as_user is not None or None,
            run_as_user=template.run_as_user,
            run_as_group=template.run_as_user,
            fs_group=template.run_as_user,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
        volumes=[
            k8s.V1Volume(
                name="dshm",
                empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=template.shm_size or None),
            ),
            k8s.V1Volume(
                name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=template.scratch_size or None)
            ),
        ],
    )


def _toleration(t: dict[str, Any]) -> k8s.V1Toleration:
    return k8s.V1Toleration(
        key=t.get("key"),
        operator=t.get("operator"),
        value=t.get("value"),
        effect=t.get("effect"),
        toleration_seconds=t.get("tolerationSeconds"),
    )


def _job_spec(
    template: JobTemplate,
    resources: Resources,
    pod_labels: dict[str, str],
    args: list[str],
    env: list[k8s.V1EnvVar],
    subdomain: str | None,
) -> k8s.V1JobSpec:
    indexed = resources.nodes > 1
    return k8s.V1JobSpec(
        # one crash of a multi-node run fails every pod (their collectives break): budget per node
        backoff_limit=template.backoff_limit * resources.nodes,
        completions=resources.nodes,
        parallelism=resources.nodes,
        completion_mode="Indexed" if indexed else None,
        active_deadline_seconds=template.active_deadline_s,
        ttl_seconds_after_finished=template.ttl_after_finished_s,
        pod_failure_policy=k8s.V1PodFailurePolicy(
            rules=[
                k8s.V1PodFailurePolicyRule(
                    action="FailJob",
                    on_exit_codes=k8s.V1PodFailurePolicyOnExitCodesRequirement(
                        container_name=CONTAINER, operator="In", values=[2]
                    ),
                ),
                k8s.V1PodFailurePolicyRule(
                    action="Ignore",
                    on_pod_conditions=[
                        k8s.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")
                    ],
                ),
            ]
        ),
        template=k8s.V1PodTemplateSpec(
            metadata=k8s.V1ObjectMeta(labels=pod_labels),
            spec=_pod_spec(template, resources, args, env, subdomain),
        ),
    )


def _labels(template: JobTemplate, run_id: str | None) -> dict[str, str]:
    labels = {**APP_LABELS, MANAGED_BY_LABEL: template.managed_by}
    if run_id:
        labels[RUN_LABEL] = run_id
    return labels


def run_labels(template: JobTemplate, run_id: str) -> dict[str, str]:
    """The labels of a run's Job and Service: what marks them as this controller's, of this run."""
    return _labels(template, run_id)


def to_dict(obj: Any) -> dict[str, Any]:
    """A client model as the plain dict (camelCase, no nulls) the API server and kubectl take."""
    return k8s.ApiClient().sanitize_for_serialization(obj)


def render_run(
    run_id: str, spec_uri: str, template: JobTemplate, resources: Resources
) -> list[dict[str, Any]]:
    """The objects the controller creates for a run: its Job, plus a headless Service when multi-node.

    The Job's only argument is the spec URI: the controller wrote the spec there before creating it.
    The URI holds the user's output prefix, so it is escaped for Kubernetes' `$(VAR)` expansion; the
    annotation is not expanded and keeps it as it is.
    """
    name = job_name(run_id)
    labels = _labels(template, run_id)
    svc = service_name(name) if resources.nodes > 1 else None
    master = f"{name}-0.{svc}" if svc else "127.0.0.1"
    job = k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(
            name=name, namespace=template.namespace, labels=labels, annotations={SPEC_ANNOTATION: spec_uri}
        ),
        spec=_job_spec(
            template,
            resources,
            labels,
            [literal(spec_uri)],
            _container_env(template, resources, master, []),
            svc,
        ),
    )
    docs = [to_dict(job)]
    if svc:
        docs.append(render_service(svc, template, labels))
    return docs


def render_service(name: str, template: JobTemplate, pod_labels: dict[str, str]) -> dict[str, Any]:
    """Headless Service giving each pod of the Indexed Job a DNS name (<job>-<index>.<service>)."""
    service = k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=k8s.V1ObjectMeta(name=name, namespace=template.namespace, labels=pod_labels),
        spec=k8s.V1ServiceSpec(
            cluster_ip="None",
            selector={RUN_LABEL: pod_labels[RUN_LABEL], **APP_LABELS},
            # pods rendezvous before they are Ready: their names must resolve from the start
            publish_not_ready_addresses=True,
            ports=[k8s.V1ServicePort(name="rdzv", port=template.rdzv_port, target_port=template.rdzv_port)],
        ),
    )
    return to_dict(service)


def _kubectl_pod(template: JobTemplate, gpus: int, runs_uri: str) -> tuple[k8s.V1JobSpec, dict[str, str]]:
    """A single-node Job spec whose run id is its own Job name: the pod reads the name from its
    `batch.kubernetes.io/job-name` label, so `kubectl create job --from=cronjob/… <run-id>` needs no edit."""
    labels = _labels(template, None)
    run_id = k8s.V1EnvVar(
        name="RUN_ID",
        value_from=k8s.V1EnvVarSource(
            field_ref=k8s.V1ObjectFieldSelector(field_path=f"metadata.labels['{JOB_NAME_LABEL}']")
        ),
    )
    extra = [run_id, _env("RUNS_URI", runs_uri)]
    resources = Resources(gpus_per_node=gpus, nodes=1)
    env = _container_env(template, resources, "127.0.0.1", extra)
    # $(VAR) is expanded by Kubernetes from the container's env, on purpose here (RUNS_URI is escaped)
    spec = _job_spec(template, resources, labels, ["$(RUNS_URI)/$(RUN_ID)/spec.json"], env, None)
    return spec, labels


def render_kubectl_job(template: JobTemplate, gpus: int, runs_uri: str) -> dict[str, Any]:
    """A Job for `kubectl apply -f`: rename it to the run id; the spec is read from runs/<name>/."""
    spec, labels = _kubectl_pod(template, gpus, runs_uri)
    job = k8s.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=k8s.V1ObjectMeta(name=KUBECTL_RUN_NAME, namespace=template.namespace, labels=labels),
        spec=spec,
    )
    return to_dict(job)


def render_cronjob(template: JobTemplate, gpus: int, runs_uri: str, name: str = "review-stack-train") -> dict:
    """A suspended CronJob that never fires: a Job template for `kubectl create job --from=cronjob/…`."""
    spec, labels = _kubectl_pod(template, gpus, runs_uri)
    cron = k8s.V1CronJob(
        api_version="batch/v1",
        kind="CronJob",
        metadata=k8s.V1ObjectMeta(name=name, namespace=template.namespace, labels=labels),
        spec=k8s.V1CronJobSpec(
            schedule="0 0 1 1 *",  # required by the API; suspend keeps it from ever firing
            suspend=True,
            concurrency_policy="Allow",
            successful_jobs_history_limit=10,
            failed_jobs_history_limit=10,
            job_template=k8s.V1JobTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=spec),
        ),
    )
    return to_dict(cron)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the pod script) as literal blocks, so the YAML reads like the script."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in the order Kubernetes shows them (apiVersion, kind, metadata, spec)."""
    return "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=110) for d in docs)
