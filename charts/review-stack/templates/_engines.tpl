{{/*
What TGI and the embedded engine share: an HTTP server speaking the TGI protocol on port 8080, a model
fetched into an emptyDir by the fetch-model init container, /health probes, optional GPUs.
*/}}

{{/* The HTTP port of both engines inside their pods. */}}
{{- define "review-stack.engine.containerPort" -}}8080{{- end -}}

{{/* Resources with nvidia.com/gpu added to the limits (a GPU is requested by its limit). Usage: include ... (dict "resources" $v.resources "gpus" 1) */}}
{{- define "review-stack.engine.resources" -}}
{{- $resources := deepCopy (.resources | default dict) -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := get $resources "limits" | default dict -}}
{{- $_ := set $limits "nvidia.com/gpu" (toString .gpus) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* /health probes on the http port. Usage: include "review-stack.engine.probes" .Values.tgi */}}
{{- define "review-stack.engine.probes" -}}
{{- $handler := dict "httpGet" (dict "path" "/health" "port" "http") -}}
startupProbe:
  {{- include "review-stack.probe" (dict "handler" $handler "timing" .startupProbe) | nindent 2 }}
livenessProbe:
  {{- include "review-stack.probe" (dict "handler" $handler "timing" .livenessProbe) | nindent 2 }}
readinessProbe:
  {{- include "review-stack.probe" (dict "handler" $handler "timing" .readinessProbe) | nindent 2 }}
{{- end -}}

{{/* Pod metadata of an engine. Usage: include "review-stack.engine.podMetadata" (dict "root" $ "component" "tgi" "values" .Values.tgi) */}}
{{- define "review-stack.engine.podMetadata" -}}
labels:
  {{- include "review-stack.labels" (dict "root" .root "component" .component) | nindent 2 }}
  {{- with .values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ include "review-stack.engine.containerPort" . | quote }}
  prometheus.io/path: /metrics
  {{- with .values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* An engine's Service (HTTP). */}}
{{- define "review-stack.engine.service" -}}
{{- $ctx := dict "root" .root "component" .component -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "review-stack.componentName" $ctx }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "review-stack.labels" $ctx | nindent 4 }}
  {{- with .values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .values.service.type }}
  selector:
    {{- include "review-stack.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: http
      port: {{ .values.service.port }}
      targetPort: http
      protocol: TCP
      appProtocol: http
{{- end -}}

{{/* An engine's NetworkPolicy: the Review service calls it; scrapers read /metrics; it reads the store. */}}
{{- define "review-stack.engine.networkPolicy" -}}
{{- $root := .root -}}
{{- $ingress := include "review-stack.engine.ingress" . -}}
{{- include "review-stack.networkPolicy" (dict "root" $root "component" .component "values" .values "ingress" $ingress "egress" (include "review-stack.networkPolicy.s3Egress" $root)) -}}
{{- end -}}

{{- define "review-stack.engine.ingress" -}}
- ports:
    - port: http
      protocol: TCP
  from:
    - podSelector:
        matchLabels:
          {{- include "review-stack.selectorLabels" (dict "root" .root "component" "review") | nindent 10 }}
{{ include "review-stack.networkPolicy.metricsIngress" (dict "root" .root "port" "http") }}
{{- end -}}
