{{/*
What the four gRPC services (dataprep, training, review, evaluation) share: one Deployment shape, its
Service, ServiceAccount, HPA and NetworkPolicy. Each service's folder calls these with its own env.

Every helper takes a dict:
  root       the chart context ($)
  component  "dataprep" | "training" | "review" | "evaluation"
  values     the component's values (.Values.<component>)
and the Deployment also:
  command         the entry point on the image's PATH ("reviewstack-review")
  env             extra env entries (YAML list, a string)
  initContainers  init containers (YAML list, a string; may be empty)
  volumes         extra volumes (YAML list, a string; may be empty)
  volumeMounts    extra mounts of the main container (YAML list, a string; may be empty)
  automountToken  whether the pod gets a Kubernetes API token (only the training controller needs one)
*/}}

{{/* The port every gRPC server listens on inside its pod. */}}
{{- define "review-stack.grpc.containerPort" -}}50051{{- end -}}

{{- define "review-stack.grpc.deployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $ctx := dict "root" $root "component" .component -}}
{{- $port := include "review-stack.grpc.containerPort" . | int -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "review-stack.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "review-stack.labels" $ctx | nindent 4 }}
spec:
  {{- if not (and $v.autoscaling $v.autoscaling.enabled) }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "review-stack.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "review-stack.labels" $ctx | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if or $v.podAnnotations $root.Values.metrics.enabled }}
      annotations:
        {{- if $root.Values.metrics.enabled }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $root.Values.metrics.port | quote }}
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "review-stack.serviceAccountName" (dict "root" $root "component" .component "values" $v) }}
      automountServiceAccountToken: {{ .automountToken }}
      {{- with include "review-stack.imagePullSecrets" $root }}{{ . | nindent 6 }}{{ end }}
      securityContext:
        {{- include "review-stack.podSecurityContext" (dict "root" $root "values" $v) | nindent 8 }}
      # the server drains for REVIEWSTACK_SHUTDOWN_GRACE_S after SIGTERM; the kubelet waits longer
      terminationGracePeriodSeconds: {{ add (int $v.shutdownGraceSeconds) 20 }}
      {{- with .initContainers }}
      initContainers:
        {{- . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "review-stack.image" (dict "image" $v.image "root" $root) }}
          imagePullPolicy: {{ include "review-stack.pullPolicy" (dict "image" $v.image "root" $root) }}
          command: [{{ .command | quote }}]
          env:
            {{- include "review-stack.commonEnv" (dict "root" $root "grpc" true) | nindent 12 }}
            {{- include "review-stack.s3.env" $root | nindent 12 }}
            - name: REVIEWSTACK_PORT
              value: {{ $port | quote }}
            - name: REVIEWSTACK_SHUTDOWN_GRACE_S
              value: {{ $v.shutdownGraceSeconds | quote }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: grpc
              containerPort: {{ $port }}
              protocol: TCP
            {{- if $root.Values.metrics.enabled }}
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
              protocol: TCP
            {{- end }}
          # grpc.health.v1 (open without a token): a service reports SERVING once it has loaded what
          # it needs, so the startup probe gives preloading time and readiness keeps traffic off until then
          startupProbe:
            {{- include "review-stack.probe" (dict "handler" (dict "grpc" (dict "port" $port)) "timing" $v.startupProbe) | nindent 12 }}
          livenessProbe:
            {{- include "review-stack.probe" (dict "handler" (dict "grpc" (dict "port" $port)) "timing" $v.livenessProbe) | nindent 12 }}
          readinessProbe:
            {{- include "review-stack.probe" (dict "handler" (dict "grpc" (dict "port" $port)) "timing" $v.readinessProbe) | nindent 12 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "review-stack.containerSecurityContext" (dict "root" $root "values" $v) | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if $root.Values.auth.enabled }}
            {{- include "review-stack.auth.volumeMount" $root | nindent 12 }}
            {{- end }}
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $v.tmpSize }}
        {{- if $root.Values.auth.enabled }}
        {{- include "review-stack.auth.volume" $root | nindent 8 }}
        {{- end }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- with include "review-stack.scheduling" $v | trim }}{{ . | nindent 6 }}{{ end }}
{{- end -}}

{{- define "review-stack.grpc.service" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $ctx := dict "root" $root "component" .component -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "review-stack.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "review-stack.labels" $ctx | nindent 4 }}
  {{- with $v.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $v.service.type }}
  selector:
    {{- include "review-stack.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $v.service.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
      {{- if and (eq $v.service.type "NodePort") $v.service.nodePort }}
      nodePort: {{ $v.service.nodePort }}
      {{- end }}
    {{- if $root.Values.metrics.enabled }}
    - name: metrics
      port: {{ $root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
    {{- end }}
{{- end -}}

{{/* A component's ServiceAccount (any component: the gRPC services, the engines, MinIO). */}}
{{- define "review-stack.serviceAccount" -}}
{{- $v := .values -}}
{{- if $v.serviceAccount.create }}
{{- $ctx := dict "root" .root "component" .component }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "review-stack.serviceAccountName" (dict "root" .root "component" .component "values" $v) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "review-stack.labels" $ctx | nindent 4 }}
  {{- with $v.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# pods opt in to a token where they need one (the training controller); no other needs the API
automountServiceAccountToken: false
{{- end }}
{{- end -}}

{{/* An autoscaling/v2 HPA of a component's Deployment (review, generation, tgi). */}}
{{- define "review-stack.hpa" -}}
{{- $v := .values -}}
{{- if $v.autoscaling.enabled }}
{{- $ctx := dict "root" .root "component" .component }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "review-stack.componentName" $ctx }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "review-stack.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "review-stack.componentName" $ctx }}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    {{- if $v.autoscaling.metrics }}
    {{- toYaml $v.autoscaling.metrics | nindent 4 }}
    {{- else }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $v.autoscaling.targetCPUUtilizationPercentage }}
    {{- end }}
  {{- with $v.autoscaling.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------------
NetworkPolicy pieces. The release's default-deny policy (networkpolicy.yaml) blocks everything; each
component's policy opens exactly what it serves and, with networkPolicy.egress.enabled, what it calls.
------------------------------------------------------------------------------------------------ */}}

{{/* Egress to DNS (port 53 anywhere, or networkPolicy.dnsTo). */}}
{{- define "review-stack.networkPolicy.dnsEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with .Values.networkPolicy.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Egress to the store: the release's MinIO pods, or the external endpoint's port at networkPolicy.externalS3To. */}}
{{- define "review-stack.networkPolicy.s3Egress" -}}
{{- if .Values.minio.enabled }}
- ports:
    - port: {{ include "review-stack.minio.containerPort" . }}
      protocol: TCP
  to:
    - podSelector:
        matchLabels:
          {{- include "review-stack.selectorLabels" (dict "root" . "component" "minio") | nindent 10 }}
{{- else }}
- ports:
    - port: {{ include "review-stack.s3.port" . }}
      protocol: TCP
  to:
    {{- toYaml .Values.networkPolicy.externalS3To | nindent 4 }}
{{- end }}
{{- end -}}

{{/*
Who may call a user-facing gRPC port: anyone (networkPolicy.allowExternal), or only pods labelled
"<fullname>-client: true" in the release namespace (the helm test pod carries it).
*/}}
{{- define "review-stack.networkPolicy.apiIngress" -}}
- ports:
    - port: grpc
      protocol: TCP
  {{- if not .Values.networkPolicy.allowExternal }}
  from:
    - podSelector:
        matchLabels:
          {{ include "review-stack.fullname" . }}-client: "true"
  {{- end }}
{{- end -}}

{{/* Scrapers of the metrics port (networkPolicy.metricsFrom; none when empty). Usage: include ... (dict "root" $ "port" "metrics") */}}
{{- define "review-stack.networkPolicy.metricsIngress" -}}
{{- if .root.Values.networkPolicy.metricsFrom }}
- ports:
    - port: {{ .port }}
      protocol: TCP
  from:
    {{- toYaml .root.Values.networkPolicy.metricsFrom | nindent 4 }}
{{- end }}
{{- end -}}

{{/*
A component's NetworkPolicy. Besides root/component/values:
  ingress  its ingress rules (YAML list string)
  egress   its egress rules beyond DNS (YAML list string)
*/}}
{{- define "review-stack.networkPolicy" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $ctx := dict "root" $root "component" .component -}}
{{- $egress := $root.Values.networkPolicy.egress.enabled -}}
{{- /* the rule lists are joined from fragments: drop their blank lines */}}
{{- $ingressRules := regexReplaceAll "(?m)^[ \t]*\n" (.ingress | default "") "" | trim -}}
{{- $egressRules := regexReplaceAll "(?m)^[ \t]*\n" (.egress | default "") "" | trim -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "review-stack.componentName" $ctx }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "review-stack.labels" $ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "review-stack.selectorLabels" $ctx | nindent 6 }}
  policyTypes:
    - Ingress
    {{- if $egress }}
    - Egress
    {{- end }}
  {{- if or $ingressRules $v.networkPolicy.extraIngress }}
  ingress:
    {{- with $ingressRules }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with $v.networkPolicy.extraIngress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- if $egress }}
  egress:
    {{- include "review-stack.networkPolicy.dnsEgress" $root | nindent 4 }}
    {{- with $egressRules }}
    {{- . | nindent 4 }}
    {{- end }}
    {{- with $v.networkPolicy.extraEgress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end -}}
