{{/*
Chart-wide helpers: names, labels, images, the store and auth settings every service shares, and
values validation. Component templates live in one folder each (templates/<component>/); the pieces
the four gRPC services share are in templates/_grpc.tpl.
*/}}

{{/* Chart name, truncated to 63 characters. Usage: include "review-stack.name" . */}}
{{- define "review-stack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Release-wide name: the release name when it already contains the chart name (no "review-stack-review-stack"),
else "<release>-<chart>"; truncated to 63 characters. Usage: include "review-stack.fullname" .
*/}}
{{- define "review-stack.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects. Usage: include "review-stack.componentName" (dict "root" $ "component" "review") */}}
{{- define "review-stack.componentName" -}}
{{- printf "%s-%s" (include "review-stack.fullname" .root | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" -}}
{{- end -}}

{{/* chart label value. Usage: include "review-stack.chart" . */}}
{{- define "review-stack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full standard labels of a component's objects; commonLabels are added here and never to selectors.
Usage: include "review-stack.labels" (dict "root" $ "component" "review")
*/}}
{{- define "review-stack.labels" -}}
helm.sh/chart: {{ include "review-stack.chart" .root }}
{{ include "review-stack.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: review-stack
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The small immutable label set of selectors (Deployment selectors cannot change after install).
Usage: include "review-stack.selectorLabels" (dict "root" $ "component" "review")
*/}}
{{- define "review-stack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "review-stack.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/*
Labels of the training job's pods: the Training service's renderer (reviewstack/training/manifests.py,
APP_LABELS) puts exactly these on the Jobs it creates, whatever the release is called, so the chart's
NetworkPolicies select them by these and the chart's CronJob uses them too. Usage: include "review-stack.trainingJobLabels" .
*/}}
{{- define "review-stack.trainingJobLabels" -}}
app.kubernetes.io/name: review-stack
app.kubernetes.io/component: training-job
{{- end -}}

{{/*
An image reference: [registry/]repository:tag[@digest]. global.imageRegistry overrides every registry
(a mirror); the tag defaults to the chart's appVersion plus the optional suffix ("-cpu", "-cuda").
Usage: include "review-stack.image" (dict "image" .Values.review.image "root" $ "suffix" "")
*/}}
{{- define "review-stack.image" -}}
{{- $registry := .root.Values.global.imageRegistry | default .image.registry -}}
{{- $tag := .image.tag | default (printf "%s%s" .root.Chart.AppVersion (.suffix | default "")) -}}
{{- $ref := .image.repository -}}
{{- if $registry }}{{ $ref = printf "%s/%s" $registry $ref }}{{ end -}}
{{- $ref = printf "%s:%s" $ref (toString $tag) -}}
{{- if .image.digest }}{{ $ref = printf "%s@%s" $ref .image.digest }}{{ end -}}
{{- $ref -}}
{{- end -}}

{{/* pullPolicy of an image: its own, else the chart-wide default. Usage: include "review-stack.pullPolicy" (dict "image" .Values.review.image "root" $) */}}
{{- define "review-stack.pullPolicy" -}}
{{- .image.pullPolicy | default .root.Values.imagePullPolicy -}}
{{- end -}}

{{/* imagePullSecrets of a pod, from global.imagePullSecrets (names). Usage: include "review-stack.imagePullSecrets" . */}}
{{- define "review-stack.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end -}}
{{- end -}}

{{/*
A component's ServiceAccount name. Usage: include "review-stack.serviceAccountName" (dict "root" $ "component" "review" "values" .Values.review)
*/}}
{{- define "review-stack.serviceAccountName" -}}
{{- if .values.serviceAccount.create -}}
{{- .values.serviceAccount.name | default (include "review-stack.componentName" .) -}}
{{- else -}}
{{- .values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/*
Pod and container securityContext: the chart-wide secure defaults with the component's overrides on top.
Usage: include "review-stack.podSecurityContext" (dict "root" $ "values" .Values.review)
*/}}
{{- define "review-stack.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.podSecurityContext) (.values.podSecurityContext | default dict)) -}}
{{- end -}}

{{- define "review-stack.containerSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.containerSecurityContext) (.values.containerSecurityContext | default dict)) -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------------
The store: MinIO in the release, or an external S3 endpoint.
------------------------------------------------------------------------------------------------ */}}

{{/* S3 endpoint (host:port or URL) the services use. Usage: include "review-stack.s3.endpoint" . */}}
{{- define "review-stack.s3.endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s:%d" (include "review-stack.componentName" (dict "root" . "component" "minio")) (int .Values.minio.service.port) -}}
{{- else -}}
{{- .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{/* "true"/"false": TLS to the S3 endpoint (the release's MinIO speaks plain HTTP inside the cluster). */}}
{{- define "review-stack.s3.secure" -}}
{{- if .Values.minio.enabled }}false{{ else }}{{ .Values.s3.secure }}{{ end -}}
{{- end -}}

{{/* The port of the S3 endpoint: explicit in s3.endpoint, else 443 with TLS and 80 without. */}}
{{- define "review-stack.s3.port" -}}
{{- if .Values.minio.enabled -}}
{{- .Values.minio.service.port -}}
{{- else -}}
{{- $hostport := regexReplaceAll "^https?://" .Values.s3.endpoint "" | trimSuffix "/" -}}
{{- $port := regexFind ":[0-9]+$" $hostport | trimPrefix ":" -}}
{{- $tls := or (hasPrefix "https://" .Values.s3.endpoint) (and (not (hasPrefix "http://" .Values.s3.endpoint)) .Values.s3.secure) -}}
{{- $port | default (ternary "443" "80" $tls) -}}
{{- end -}}
{{- end -}}

{{/* The store URI: s3://<bucket>[/<prefix>]. Usage: include "review-stack.s3.store" . */}}
{{- define "review-stack.s3.store" -}}
{{- if .Values.s3.prefix -}}
{{- printf "s3://%s/%s" .Values.s3.bucket (trimAll "/" .Values.s3.prefix) -}}
{{- else -}}
{{- printf "s3://%s" .Values.s3.bucket -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret holding the S3 credentials (the chart's, or s3.existingSecret). */}}
{{- define "review-stack.s3.secretName" -}}
{{- .Values.s3.existingSecret | default (printf "%s-s3" (include "review-stack.fullname" .)) -}}
{{- end -}}

{{/* Name of the Secret holding the API bearer token (the chart's, or auth.existingSecret). */}}
{{- define "review-stack.auth.secretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "review-stack.fullname" .)) -}}
{{- end -}}

{{/* The token file as the services read it (a mounted Secret, re-read when it changes): usage (include
"review-stack.auth.tokenFile" .). */}}
{{- define "review-stack.auth.tokenFile" -}}
/var/run/secrets/reviewstack/auth/{{ .Values.auth.tokenKey }}
{{- end -}}

{{/* The token Secret as a volume (a file, not an env var: a rotated token needs no restart): usage
(include "review-stack.auth.volume" .), with auth.enabled. */}}
{{- define "review-stack.auth.volume" -}}
- name: auth-token
  secret:
    secretName: {{ include "review-stack.auth.secretName" . }}
    items:
      - key: {{ .Values.auth.tokenKey }}
        path: {{ .Values.auth.tokenKey }}
{{- end -}}

{{/* Its mount: usage (include "review-stack.auth.volumeMount" .), with auth.enabled. */}}
{{- define "review-stack.auth.volumeMount" -}}
- name: auth-token
  mountPath: {{ dir (include "review-stack.auth.tokenFile" .) }}
  readOnly: true
{{- end -}}

{{/*
The store settings every service and the model fetcher read (REVIEWSTACK_STORE, REVIEWSTACK_S3_*):
the credentials come from the Secret, never as literals. Usage: include "review-stack.s3.env" .
*/}}
{{- define "review-stack.s3.env" -}}
- name: REVIEWSTACK_STORE
  value: {{ include "review-stack.s3.store" . | quote }}
- name: REVIEWSTACK_S3_ENDPOINT
  value: {{ include "review-stack.s3.endpoint" . | quote }}
- name: REVIEWSTACK_S3_SECURE
  value: {{ include "review-stack.s3.secure" . | quote }}
{{- if .Values.s3.region }}
- name: REVIEWSTACK_S3_REGION
  value: {{ .Values.s3.region | quote }}
{{- end }}
- name: REVIEWSTACK_S3_CREATE_BUCKET
  value: {{ .Values.s3.createBucket | quote }}
- name: REVIEWSTACK_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "review-stack.s3.secretName" . }}
      key: {{ .Values.s3.accessKeyKey }}
- name: REVIEWSTACK_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "review-stack.s3.secretName" . }}
      key: {{ .Values.s3.secretKeyKey }}
{{- end -}}

{{/*
The value of one key of a Secret the chart creates: the one the user set (--set; rotates it), else the
one the release's Secret already holds (lookup finds it on upgrade), else a fresh random one. Generated
credentials so survive `helm upgrade` and never sit in a values file; `helm template` has no cluster to
look in, so there it always generates.
Usage: include "review-stack.secretValue" (dict "root" $ "secret" "name" "key" "access-key" "value" .Values.s3.accessKey "length" 20)
*/}}
{{- define "review-stack.secretValue" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if .value -}}
{{- .value -}}
{{- else if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum (int .length) -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------------
Settings every review-stack process shares.
------------------------------------------------------------------------------------------------ */}}

{{/*
The token (for the servers that check it: the gRPC services, and the embedded engine with "token" true),
logging, HOME on the writable /tmp, and (for gRPC servers) metrics.
Usage: include "review-stack.commonEnv" (dict "root" $ "grpc" true)
*/}}
{{- define "review-stack.commonEnv" -}}
{{- if and .root.Values.auth.enabled (or .grpc .token) }}
- name: REVIEWSTACK_AUTH_TOKEN_FILE
  value: {{ include "review-stack.auth.tokenFile" .root }}
{{- end }}
- name: REVIEWSTACK_LOG_FORMAT
  value: {{ .root.Values.logFormat | quote }}
- name: REVIEWSTACK_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
# the root filesystem is read-only: caches (transformers, torch, Triton) go to the /tmp emptyDir
- name: HOME
  value: /tmp
- name: PYTHONUNBUFFERED
  value: "1"
{{- if .grpc }}
{{- if .root.Values.metrics.enabled }}
- name: REVIEWSTACK_METRICS_PORT
  value: {{ .root.Values.metrics.port | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The backend URL the Review service calls: review.backendUrl, else the release's TGI, else its engine. */}}
{{- define "review-stack.review.backendUrl" -}}
{{- if .Values.review.backendUrl -}}
{{- .Values.review.backendUrl -}}
{{- else if .Values.tgi.enabled -}}
{{- printf "http://%s:%d" (include "review-stack.componentName" (dict "root" . "component" "tgi")) (int .Values.tgi.service.port) -}}
{{- else if .Values.generation.enabled -}}
{{- printf "http://%s:%d" (include "review-stack.componentName" (dict "root" . "component" "generation")) (int .Values.generation.service.port) -}}
{{- end -}}
{{- end -}}

{{/* GPU pods' nodeSelector / tolerations: the component's own, else the chart-wide gpu.* ones. */}}
{{- define "review-stack.gpuScheduling" -}}
{{- $nodeSelector := .values.nodeSelector | default .root.Values.gpu.nodeSelector -}}
{{- $tolerations := .values.tolerations | default .root.Values.gpu.tolerations -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Plain scheduling of CPU pods. Usage: include "review-stack.scheduling" .Values.review */}}
{{- define "review-stack.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Probe timings: handler + the component's timing values. Usage: include "review-stack.probe" (dict "handler" $h "timing" .Values.x.livenessProbe) */}}
{{- define "review-stack.probe" -}}
{{ toYaml .handler }}
{{ toYaml .timing }}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------------
Validation: one message per broken rule, then a single `fail` with all of them (bitnami's validateValues).
------------------------------------------------------------------------------------------------ */}}
{{- define "review-stack.validateValues" -}}
{{- $rules := list "s3Endpoint" "s3Credentials" "backend" "cpuEngineGpus" "cudaEngineGpus" "tgiModel" "engineModel" "reviewTokenizer" "webServices" "webSecretKeys" -}}
{{- $messages := list -}}
{{- range $rules -}}
{{- $messages = append $messages (include (printf "review-stack.validate.%s" .) $) -}}
{{- end -}}
{{- $messages = without $messages "" -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages) | fail -}}
{{- end -}}
{{- end -}}

{{- define "review-stack.validate.s3Endpoint" -}}
{{- if and (not .Values.minio.enabled) (not .Values.s3.endpoint) -}}
review-stack: s3.endpoint
    minio.enabled=false needs an external S3 endpoint: set s3.endpoint (host:port or https://host).
{{- end -}}
{{- end -}}

{{- define "review-stack.validate.s3Credentials" -}}
{{- if and (not .Values.minio.enabled) (not .Values.s3.existingSecret) (not (and .Values.s3.accessKey .Values.s3.secretKey)) -}}
review-stack: s3.existingSecret
    an external S3 endpoint needs its own credentials: set s3.existingSecret to a Secret you created
    (keys s3.accessKeyKey and s3.secretKeyKey); generated ones would mean nothing to it.
{{- end -}}
{{- end -}}

{{- define "review-stack.validate.backend" -}}
{{- if and .Values.review.enabled (not (include "review-stack.review.backendUrl" .)) -}}
review-stack: review.backendUrl
    the Review service needs a generation backend: enable tgi or generation, or set review.backendUrl.
{{- end -}}
{{- end -}}

{{- define "review-stack.validate.cpuEngineGpus" -}}
{{- if and .Values.generation.enabled (eq .Values.generation.flavor "cpu") (gt (int .Values.generation.gpus) 0) -}}
review-stack: generation.gpus
    generation.flavor=cpu runs without a GPU: set generation.gpus=0, or generation.flavor=cuda.
{{- end -}}
{{- end -}}

{{- define "review-stack.validate.cudaEngineGpus" -}}
{{- if and .Values.generation.enabled (eq .Values.generation.flavor "cuda") (eq (int .Values.generation.gpus) 0) -}}
review-stack: generation.gpus
    generation.flavor=cuda needs a GPU: set generation.gpus=1 (the engine runs on one).
{{- end -}}
{{- end -}}

{{- define "review-stack.validate.tgiModel" -}}
{{- if and .Values.tgi.enabled (not .Values.tgi.model.prefix) -}}
review-stack: tgi.model.prefix
    TGI serves a model from the store: set tgi.model.prefix (e.g. runs/<run-id>/merged).
{{- end -}}
{{- end -}}

{{- define "review-stack.validate.engineModel" -}}
{{- if and .Values.generation.enabled (eq .Values.generation.model.source "store") (not .Values.generation.model.prefix) -}}
review-stack: generation.model.prefix
    generation.model.source=store needs generation.model.prefix (e.g. runs/<run-id>/merged).
{{- end -}}
{{- end -}}

{{- define "review-stack.validate.reviewTokenizer" -}}
{{- if and .Values.review.enabled (eq .Values.review.tokenizer.source "store") (not .Values.review.tokenizer.prefix) -}}
review-stack: review.tokenizer.prefix
    review.tokenizer.source=store needs review.tokenizer.prefix (the served model's folder).
{{- end -}}
{{- end -}}

{{- define "review-stack.validate.webServices" -}}
{{- if and .Values.web.enabled (eq (include "review-stack.web.reviewServices" .) "{}") -}}
review-stack: web.reviewServices
    the web page needs a Review service to call: enable review, or name others in web.reviewServices.
{{- end -}}
{{- end -}}

{{- define "review-stack.validate.webSecretKeys" -}}
{{- if and .Values.web.enabled (eq .Values.web.login.tokenKey .Values.web.login.sessionKeyKey) -}}
review-stack: web.login.sessionKeyKey
    the login token and the session key are two values: give web.login.tokenKey and sessionKeyKey
    different names.
{{- end -}}
{{- end -}}
