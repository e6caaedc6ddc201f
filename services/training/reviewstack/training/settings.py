"""The launcher's settings: which launcher, and how it shapes a run (local process or Kubernetes Job).

They are `REVIEWSTACK_*` variables (or flags of `reviewstack-training`), shared by the server and the
CLI, so `reviewstack train render-job` prints exactly the Job the server would create. Dict and list
settings take JSON:
    REVIEWSTACK_K8S_NODE_SELECTOR='{"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from reviewstack.common.settings import StoreSettings

# Cluster GPU node pools (GKE, AKS, EKS with the NVIDIA operator) taint their nodes like this, so a pod
# that asks for GPUs must tolerate it; a pool with another taint sets REVIEWSTACK_K8S_TOLERATIONS.
DEFAULT_GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class Toleration(BaseModel):
    """A pod toleration, checked here so a misspelt key fails at startup, not as a Job that never runs."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds")

    def to_k8s(self) -> dict[str, object]:
        """The Kubernetes (camelCase) form, without unset fields."""
        return self.model_dump(by_alias=True, exclude_none=True)


class LauncherSettings(StoreSettings):
    """Where runs go and what they get. The store settings are the controller's own store: the default
    output of a run, and the S3 endpoint a Kubernetes pod is told to use."""

    launcher: Literal["local", "kubernetes"] = Field(
        "local", description="local: a process on this machine; kubernetes: a Job on the cluster"
    )
    train_command: str = Field(
        "reviewstack-train", description="the training job's entry point, as found on PATH (local launcher)"
    )
    poll_interval_s: float = Field(2.0, gt=0, description="how often a run's state and status.json are read")
    max_concurrent_runs: int | None = Field(
        None, ge=1, description="runs at once, more wait PENDING; default 1 local (one box), 64 kubernetes"
    )
    # -- local launcher --
    local_gpus: int | None = Field(
        None,
        ge=0,
        description="GPUs this machine offers runs; unset = count /dev/nvidiaN (CUDA_VISIBLE_DEVICES)",
    )
    local_log_dir: Path = Field(
        Path("reviewstack-train-logs"), description="where local runs write <run-id>.log (stdout + stderr)"
    )
    local_max_restarts: int = Field(
        2, ge=0, description="restarts of a crashed local run (each resumes from its latest checkpoint)"
    )
    cancel_grace_s: float = Field(
        60.0, ge=0, description="time a cancelled local run gets after SIGTERM to checkpoint, then SIGKILL"
    )
    # -- Kubernetes launcher --
    k8s_namespace: str = Field("", description="namespace of the Jobs; empty = the pod's own, else default")
    k8s_image: str = Field("review-stack/training-job:0.1.0", description="training job image")
    k8s_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    k8s_image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secret names for the registry"
    )
    k8s_gpus_per_node: int = Field(1, ge=0, description="default GPUs per pod (0 = CPU only)")
    k8s_node_selector: dict[str, str] = Field(
        default_factory=dict, description="nodeSelector of GPU pods (the GPU node pool's labels)"
    )
    k8s_tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration.model_validate(DEFAULT_GPU_TOLERATION)],
        description="tolerations of GPU pods (the GPU node pool's taints)",
    )
    k8s_s3_secret: str = Field(
        "review-stack-s3", description="Secret holding the S3 credentials the pods use (empty = none)"
    )
    k8s_s3_access_key_field: str = Field("access-key", description="key of the access key id in that Secret")
    k8s_s3_secret_key_field: str = Field("secret-key", description="key of the secret key in that Secret")
    k8s_service_account: str = Field("", description="service account of the pods (empty = the default)")
    k8s_cpu: str = Field("", description="CPU request per pod, e.g. '16' (empty = none)")
    k8s_memory: str = Field("", description="memory request and limit per pod, e.g. '200Gi' (empty = none)")
    k8s_shm_size: str = Field(
        "64Gi", description="size of /dev/shm (a memory emptyDir) for data loaders/NCCL"
    )
    k8s_scratch_size: str = Field("", description="size limit of /scratch (HOME, caches); empty = no limit")
    k8s_backoff_limit: int = Field(
        3, ge=0, description="restarts of a crashed run (times the node count: one crash fails every pod)"
    )
    k8s_active_deadline_s: int | None = Field(None, ge=1, description="a run is stopped after this long")
    k8s_ttl_after_finished_s: int | None = Field(
        None, ge=0, description="delete finished Jobs after this long (the store keeps the run)"
    )
    k8s_termination_grace_s: int = Field(
        120, ge=0, description="time a stopped pod gets after SIGTERM to save a checkpoint"
    )
    k8s_rdzv_port: int = Field(29500, ge=1, le=65535, description="torchrun rendezvous port (multi-node)")
    k8s_run_as_user: int | None = Field(
        1000, ge=0, description="uid of the trainer (non-root); unset = image's"
    )
    k8s_priority_class: str = Field("", description="priorityClassName of the pods (empty = none)")

    @field_validator("k8s_gpus_per_node")
    @classmethod
    def _gpus(cls, value: int) -> int:
        if value > 16:
            raise ValueError("more than 16 GPUs in one pod is not a node shape; use nodes for scale-out")
        return value
