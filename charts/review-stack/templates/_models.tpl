{{/*
Models in pods: the `fetch-model` init container copies a published store folder (a run's merged/) or
the embedded model into the pod's "models" emptyDir at /models/model, before TGI, the engine or the
Review service (tokenizer only) starts. files/fetch-model.py, mounted from the "scripts" ConfigMap.
*/}}

{{/* Where the model lands inside the pod. */}}
{{- define "review-stack.models.dir" -}}/models/model{{- end -}}

{{/*
The init container. Usage: include "review-stack.fetchModel.initContainer"
  (dict "root" $ "source" "store" "prefix" "runs/x/merged" "only" "")   # only: "" | "tokenizer"
*/}}
{{- define "review-stack.fetchModel.initContainer" -}}
{{- $root := .root -}}
- name: fetch-model
  image: {{ include "review-stack.image" (dict "image" $root.Values.modelLoader.image "root" $root "suffix" "-cpu") }}
  imagePullPolicy: {{ include "review-stack.pullPolicy" (dict "image" $root.Values.modelLoader.image "root" $root) }}
  command: ["python", "/opt/review-stack/scripts/fetch-model.py"]
  env:
    {{- include "review-stack.commonEnv" (dict "root" $root "grpc" false) | nindent 4 }}
    {{- if eq .source "store" }}
    {{- include "review-stack.s3.env" $root | nindent 4 }}
    {{- end }}
    - name: FETCH_SOURCE
      value: {{ .source | quote }}
    - name: FETCH_PREFIX
      value: {{ .prefix | default "" | quote }}
    - name: FETCH_DEST
      value: {{ include "review-stack.models.dir" . }}
    - name: FETCH_ONLY
      value: {{ .only | default "" | quote }}
  resources:
    {{- toYaml $root.Values.modelLoader.resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: /models
    - name: tmp
      mountPath: /tmp
    - name: scripts
      mountPath: /opt/review-stack/scripts
      readOnly: true
{{- end -}}

{{/* The volumes the init container needs (besides tmp). Usage: include "review-stack.fetchModel.volumes" (dict "root" $ "sizeLimit" "40Gi") */}}
{{- define "review-stack.fetchModel.volumes" -}}
- name: models
  emptyDir:
    sizeLimit: {{ .sizeLimit }}
- name: scripts
  configMap:
    name: {{ include "review-stack.componentName" (dict "root" .root "component" "scripts") }}
    defaultMode: 0444
{{- end -}}
