{{/* The Review service's own settings (REVIEWSTACK_*; see services/review/reviewstack/review/main.py). */}}
{{- define "review-stack.review.env" -}}
{{- $v := .Values.review -}}
- name: REVIEWSTACK_BACKEND_URL
  value: {{ include "review-stack.review.backendUrl" . | quote }}
- name: REVIEWSTACK_BACKEND_TIMEOUT_S
  value: {{ $v.backendTimeoutSeconds | quote }}
{{- if and .Values.tgi.enabled (not $v.backendUrl) }}
# TGI applies one λ to every request: the service records it and refuses requests asking another
- name: REVIEWSTACK_BACKEND_REFUSAL_PENALTY
  value: {{ .Values.tgi.refusalPenalty | quote }}
{{- end }}
- name: REVIEWSTACK_REFUSAL_PENALTY
  value: {{ $v.refusalPenalty | quote }}
- name: REVIEWSTACK_REFUSAL_PENALTY_MAX
  value: {{ $v.refusalPenaltyMax | quote }}
- name: REVIEWSTACK_MAX_IN_FLIGHT
  value: {{ $v.maxInFlight | quote }}
- name: REVIEWSTACK_MAX_PAPER_BYTES
  value: {{ $v.maxPaperBytes | int64 | quote }}
- name: REVIEWSTACK_MAX_PAPER_CHARS
  value: {{ $v.maxPaperChars | int64 | quote }}
{{- if and .Values.auth.enabled .Values.generation.enabled (not .Values.tgi.enabled) (not $v.backendUrl) }}
# the release's embedded engine checks the release's token (TGI checks none)
- name: REVIEWSTACK_BACKEND_AUTH_TOKEN_FILE
  value: {{ include "review-stack.auth.tokenFile" . }}
{{- end }}
{{- with $v.maxPromptLength }}
- name: REVIEWSTACK_MAX_PROMPT_LENGTH
  value: {{ . | quote }}
{{- end }}
{{- with $v.maxNewTokens }}
- name: REVIEWSTACK_MAX_NEW_TOKENS
  value: {{ . | quote }}
{{- end }}
{{- with $v.repetitionPenalty }}
- name: REVIEWSTACK_REPETITION_PENALTY
  value: {{ . | quote }}
{{- end }}
{{- with include "review-stack.review.servedModel" . }}
# the lineage names the run the backend serves, not the backend's local /models directory
- name: REVIEWSTACK_SERVED_MODEL
  value: {{ . | quote }}
{{- end }}
{{- if ne $v.tokenizer.source "image" }}
- name: REVIEWSTACK_TOKENIZER
  value: {{ include "review-stack.models.dir" . }}
{{- end }}
{{- end -}}

{{/* The model the release's own backend serves, as its store URI; "" for an external backendUrl. */}}
{{- define "review-stack.review.servedModel" -}}
{{- if not .Values.review.backendUrl -}}
{{- if .Values.tgi.enabled -}}
{{ include "review-stack.s3.store" . }}/{{ .Values.tgi.model.prefix }}
{{- else if and .Values.generation.enabled (eq .Values.generation.model.source "embedded") -}}
SmolLM2-135M-Instruct (embedded)
{{- else if .Values.generation.enabled -}}
{{ include "review-stack.s3.store" . }}/{{ .Values.generation.model.prefix }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Egress to the release's backend pods (an external review.backendUrl goes in extraEgress). */}}
{{- define "review-stack.review.backendEgress" -}}
{{- $backend := "" -}}
{{- if not .Values.review.backendUrl -}}
{{- if .Values.tgi.enabled }}{{ $backend = "tgi" }}{{ else if .Values.generation.enabled }}{{ $backend = "generation" }}{{ end -}}
{{- end -}}
{{- if $backend }}
- ports:
    - port: http
      protocol: TCP
  to:
    - podSelector:
        matchLabels:
          {{- include "review-stack.selectorLabels" (dict "root" . "component" $backend) | nindent 10 }}
{{- end }}
{{- end -}}
