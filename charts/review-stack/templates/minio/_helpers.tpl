{{/* The port MinIO's S3 API listens on inside its pod (the Service maps minio.service.port to it). */}}
{{- define "review-stack.minio.containerPort" -}}9000{{- end -}}

{{/* Components whose pods call the store (MinIO's NetworkPolicy admits exactly these). */}}
{{- define "review-stack.minio.clients" -}}
{{- $clients := list "dataprep" "training" "review" "evaluation" "generation" "tgi" -}}
{{- if .Values.web.enabled }}{{ $clients = append $clients "web" }}{{ end -}}
{{- $clients | toJson -}}
{{- end -}}

{{/* S3 clients: the release's services (and their fetch-model init containers), the web page (it reads
reports) and the training Jobs. */}}
{{- define "review-stack.minio.ingress" -}}
- ports:
    - port: s3
      protocol: TCP
  from:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: {{ include "review-stack.name" . }}
          app.kubernetes.io/instance: {{ .Release.Name }}
        matchExpressions:
          - key: app.kubernetes.io/component
            operator: In
            values: {{ include "review-stack.minio.clients" . }}
    - podSelector:
        matchLabels:
          {{- include "review-stack.trainingJobLabels" . | nindent 10 }}
{{- end -}}
