{{/*
The training controller and the training job. The controller creates each run's Job with the renderer
in services/training/reviewstack/training/manifests.py, configured by the REVIEWSTACK_K8S_* variables
below; the chart's CronJob (cronjob.yaml) renders the same pod for `kubectl create job --from=cronjob/…`.
*/}}

{{/* The training job's image: <version> is the CUDA build, <version>-cpu the CPU one (training.job.variant). */}}
{{- define "review-stack.trainingJob.image" -}}
{{- include "review-stack.image" (dict "image" .Values.training.job.image "root" . "suffix" (ternary "-cpu" "" (eq .Values.training.job.variant "cpu"))) -}}
{{- end -}}

{{/* The training pods' ServiceAccount (no API token). */}}
{{- define "review-stack.trainingJob.serviceAccountName" -}}
{{- include "review-stack.serviceAccountName" (dict "root" . "component" "training-job" "values" .Values.training.job) -}}
{{- end -}}

{{/* nodeSelector / tolerations of GPU training pods: training.job.*, else gpu.* */}}
{{- define "review-stack.trainingJob.nodeSelector" -}}
{{- toJson (.Values.training.job.nodeSelector | default .Values.gpu.nodeSelector) -}}
{{- end -}}
{{- define "review-stack.trainingJob.tolerations" -}}
{{- toJson (.Values.training.job.tolerations | default .Values.gpu.tolerations) -}}
{{- end -}}

{{/* Where the runs live: <store>/runs (the CronJob trains <runs>/<run-id>/spec.json). */}}
{{- define "review-stack.trainingJob.runsUri" -}}
{{- printf "%s/runs" (include "review-stack.s3.store" .) -}}
{{- end -}}

{{/* The launcher's settings (services/training/reviewstack/training/settings.py, LauncherSettings). */}}
{{- define "review-stack.training.env" -}}
{{- $job := .Values.training.job -}}
- name: REVIEWSTACK_LAUNCHER
  value: kubernetes
- name: REVIEWSTACK_K8S_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: REVIEWSTACK_K8S_IMAGE
  value: {{ include "review-stack.trainingJob.image" . | quote }}
- name: REVIEWSTACK_K8S_IMAGE_PULL_POLICY
  value: {{ include "review-stack.pullPolicy" (dict "image" $job.image "root" .) | quote }}
- name: REVIEWSTACK_K8S_IMAGE_PULL_SECRETS
  value: {{ toJson (.Values.global.imagePullSecrets | default list) | quote }}
- name: REVIEWSTACK_K8S_GPUS_PER_NODE
  value: {{ $job.gpusPerNode | quote }}
- name: REVIEWSTACK_K8S_NODE_SELECTOR
  value: {{ include "review-stack.trainingJob.nodeSelector" . | quote }}
- name: REVIEWSTACK_K8S_TOLERATIONS
  value: {{ include "review-stack.trainingJob.tolerations" . | quote }}
# the name of the Secret the training pods read the S3 credentials from (not the credentials)
- name: REVIEWSTACK_K8S_S3_SECRET
  value: {{ include "review-stack.s3.secretName" . | quote }}
- name: REVIEWSTACK_K8S_S3_ACCESS_KEY_FIELD
  value: {{ .Values.s3.accessKeyKey | quote }}
- name: REVIEWSTACK_K8S_S3_SECRET_KEY_FIELD
  value: {{ .Values.s3.secretKeyKey | quote }}
- name: REVIEWSTACK_K8S_SERVICE_ACCOUNT
  value: {{ include "review-stack.trainingJob.serviceAccountName" . | quote }}
- name: REVIEWSTACK_K8S_CPU
  value: {{ $job.cpu | quote }}
- name: REVIEWSTACK_K8S_MEMORY
  value: {{ $job.memory | quote }}
- name: REVIEWSTACK_K8S_SHM_SIZE
  value: {{ $job.shmSize | quote }}
- name: REVIEWSTACK_K8S_SCRATCH_SIZE
  value: {{ $job.scratchSize | quote }}
- name: REVIEWSTACK_K8S_BACKOFF_LIMIT
  value: {{ $job.backoffLimit | quote }}
{{- if not (kindIs "invalid" $job.activeDeadlineSeconds) }}
- name: REVIEWSTACK_K8S_ACTIVE_DEADLINE_S
  value: {{ $job.activeDeadlineSeconds | quote }}
{{- end }}
{{- if not (kindIs "invalid" $job.ttlSecondsAfterFinished) }}
- name: REVIEWSTACK_K8S_TTL_AFTER_FINISHED_S
  value: {{ $job.ttlSecondsAfterFinished | quote }}
{{- end }}
- name: REVIEWSTACK_K8S_TERMINATION_GRACE_S
  value: {{ $job.terminationGracePeriodSeconds | quote }}
- name: REVIEWSTACK_K8S_RDZV_PORT
  value: {{ $job.rdzvPort | quote }}
- name: REVIEWSTACK_K8S_RUN_AS_USER
  value: {{ $job.runAsUser | quote }}
- name: REVIEWSTACK_K8S_PRIORITY_CLASS
  value: {{ $job.priorityClassName | quote }}
{{- if not (kindIs "invalid" .Values.training.maxConcurrentRuns) }}
- name: REVIEWSTACK_MAX_CONCURRENT_RUNS
  value: {{ .Values.training.maxConcurrentRuns | quote }}
{{- end }}
- name: REVIEWSTACK_BASE_MODEL_ROOTS
  value: {{ include "review-stack.jsonList" .Values.training.baseModelRoots | quote }}
{{- end -}}

{{/* Egress of the controller to the Kubernetes API (networkPolicy.kubeAPI). */}}
{{- define "review-stack.training.kubeApiEgress" -}}
- ports:
    {{- range .Values.networkPolicy.kubeAPI.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .Values.networkPolicy.kubeAPI.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Labels of the CronJob's Job and pods: the renderer's (APP_LABELS, managed-by kubectl) plus the release. */}}
{{- define "review-stack.trainingJob.podLabels" -}}
{{ include "review-stack.trainingJobLabels" . }}
app.kubernetes.io/managed-by: kubectl
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
