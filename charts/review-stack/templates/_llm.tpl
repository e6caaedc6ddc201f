{{/*
The LLM endpoints (.Values.llmEndpoints) of the services that call one (evaluation's judge, data-prep's
llm distiller): one JSON setting naming them, and one Secret volume per key, read as a file so that a
rotated key takes effect without a restart.
*/}}

{{/* Where an endpoint's key is mounted: usage (include "review-stack.llm.keyDir" "gpt4"). */}}
{{- define "review-stack.llm.keyDir" -}}/var/run/secrets/reviewstack/llm/{{ . }}{{- end -}}

{{/* REVIEWSTACK_LLM_ENDPOINTS as JSON: usage (include "review-stack.llm.endpointsJson" .). */}}
{{- define "review-stack.llm.endpointsJson" -}}
{{- $out := dict -}}
{{- range $name, $e := .Values.llmEndpoints -}}
{{- $entry := dict "url" $e.url "model" $e.model -}}
{{- with $e.apiKeySecret }}{{ if .name -}}
{{- $_ := set $entry "api_key_file" (printf "%s/%s" (include "review-stack.llm.keyDir" $name) (.key | default "api-key")) -}}
{{- end }}{{ end -}}
{{- $_ := set $out $name $entry -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The env entry, when endpoints are configured: usage (include "review-stack.llm.env" .). */}}
{{- define "review-stack.llm.env" -}}
{{- if .Values.llmEndpoints }}
- name: REVIEWSTACK_LLM_ENDPOINTS
  value: {{ include "review-stack.llm.endpointsJson" . | quote }}
{{- end }}
{{- end -}}

{{/* One Secret volume per endpoint key: usage (include "review-stack.llm.volumes" .). */}}
{{- define "review-stack.llm.volumes" -}}
{{- range $name, $e := .Values.llmEndpoints }}
{{- with $e.apiKeySecret }}{{ if .name }}
- name: llm-key-{{ $name }}
  secret:
    secretName: {{ .name }}
    items:
      - key: {{ .key | default "api-key" }}
        path: {{ .key | default "api-key" }}
{{- end }}{{ end }}
{{- end }}
{{- end -}}

{{/* Their mounts: usage (include "review-stack.llm.volumeMounts" .). */}}
{{- define "review-stack.llm.volumeMounts" -}}
{{- range $name, $e := .Values.llmEndpoints }}
{{- with $e.apiKeySecret }}{{ if .name }}
- name: llm-key-{{ $name }}
  mountPath: {{ include "review-stack.llm.keyDir" $name }}
  readOnly: true
{{- end }}{{ end }}
{{- end }}
{{- end -}}

{{/* A list setting as the JSON pydantic-settings reads: usage (include "review-stack.jsonList" .list). */}}
{{- define "review-stack.jsonList" -}}{{ toJson (. | default list) }}{{- end -}}
