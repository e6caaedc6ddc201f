{{/*
The web page (reviewstack-web): an HTTP server on port 8080 that calls the Review and Evaluation
services over gRPC (with the release's bearer token, kept server-side) and reads the store. Its
settings: services/web/reviewstack/web/settings.py (WebSettings).
*/}}

{{/* The HTTP port the page listens on inside its pod. */}}
{{- define "review-stack.web.containerPort" -}}8080{{- end -}}

{{/* Name of the Secret holding the login token and the session key (the chart's, or web.login.existingSecret). */}}
{{- define "review-stack.web.secretName" -}}
{{- .Values.web.login.existingSecret | default (include "review-stack.componentName" (dict "root" . "component" "web")) -}}
{{- end -}}

{{/* Where that Secret is mounted (files, re-read by the page when they change). */}}
{{- define "review-stack.web.secretDir" -}}/var/run/secrets/reviewstack/web{{- end -}}

{{/*
The Review services people pick from, as REVIEWSTACK_REVIEW_SERVICES' JSON: web.reviewServices, else
the release's own Review service as "reviewer" (none when review.enabled=false).
Usage: include "review-stack.web.reviewServices" .
*/}}
{{- define "review-stack.web.reviewServices" -}}
{{- $services := .Values.web.reviewServices | default dict -}}
{{- if and (not $services) .Values.review.enabled -}}
{{- $services = dict "reviewer" (printf "%s:%d" (include "review-stack.componentName" (dict "root" . "component" "review")) (int .Values.review.service.port)) -}}
{{- end -}}
{{- toJson $services -}}
{{- end -}}

{{/* "true" when the page calls the release's own Evaluation service (the one its policies admit). */}}
{{- define "review-stack.web.usesReleaseEvaluation" -}}
{{- if and .Values.web.enabled .Values.web.evaluation.enabled (not .Values.web.evaluation.target) .Values.evaluation.enabled -}}true{{- end -}}
{{- end -}}

{{/* The Evaluation service the page calls (host:port), or "" when it offers no evaluation. */}}
{{- define "review-stack.web.evaluationService" -}}
{{- if .Values.web.evaluation.enabled -}}
{{- if .Values.web.evaluation.target -}}
{{- .Values.web.evaluation.target -}}
{{- else if .Values.evaluation.enabled -}}
{{- printf "%s:%d" (include "review-stack.componentName" (dict "root" . "component" "evaluation")) (int .Values.evaluation.service.port) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true"/"false": cookies only over HTTPS (web.secureCookies, else on exactly when the Ingress has TLS). */}}
{{- define "review-stack.web.secureCookies" -}}
{{- if kindIs "invalid" .Values.web.secureCookies -}}
{{- and .Values.web.ingress.enabled (not (empty .Values.web.ingress.tls)) -}}
{{- else -}}
{{- .Values.web.secureCookies -}}
{{- end -}}
{{- end -}}

{{/* The page's own settings (REVIEWSTACK_*; the store and logging ones come from the shared helpers). */}}
{{- define "review-stack.web.env" -}}
{{- $v := .Values.web -}}
- name: REVIEWSTACK_HOST
  value: 0.0.0.0
- name: REVIEWSTACK_PORT
  value: {{ include "review-stack.web.containerPort" . | quote }}
- name: REVIEWSTACK_REVIEW_SERVICES
  value: {{ include "review-stack.web.reviewServices" . | quote }}
{{- with include "review-stack.web.evaluationService" . }}
- name: REVIEWSTACK_EVALUATION_SERVICE
  value: {{ . | quote }}
{{- end }}
{{- if .Values.auth.enabled }}
# the services' bearer token: the page sends it on every call and never shows it to a browser
- name: REVIEWSTACK_GRPC_TOKEN_FILE
  value: {{ include "review-stack.auth.tokenFile" . }}
{{- end }}
- name: REVIEWSTACK_LOGIN
  value: {{ $v.login.mode | quote }}
{{- if eq $v.login.mode "token" }}
- name: REVIEWSTACK_LOGIN_TOKEN_FILE
  value: {{ include "review-stack.web.secretDir" . }}/{{ $v.login.tokenKey }}
{{- end }}
# one signing key for every replica: a session survives a hop between them, and a restart
- name: REVIEWSTACK_SESSION_SECRET_FILE
  value: {{ include "review-stack.web.secretDir" . }}/{{ $v.login.sessionKeyKey }}
- name: REVIEWSTACK_SECURE_COOKIES
  value: {{ include "review-stack.web.secureCookies" . | quote }}
- name: REVIEWSTACK_MAX_UPLOAD_BYTES
  value: {{ $v.maxUploadBytes | int64 | quote }}
- name: REVIEWSTACK_MAX_REVIEWS_IN_FLIGHT
  value: {{ $v.maxReviewsInFlight | quote }}
- name: REVIEWSTACK_REVIEW_TIMEOUT_S
  value: {{ $v.reviewTimeoutSeconds | quote }}
{{- end -}}

{{/* The login Secret as a volume: the session key always, the login token with login.mode=token. */}}
{{- define "review-stack.web.secretVolume" -}}
{{- $login := .Values.web.login -}}
- name: web-login
  secret:
    secretName: {{ include "review-stack.web.secretName" . }}
    items:
      {{- if eq $login.mode "token" }}
      - key: {{ $login.tokenKey }}
        path: {{ $login.tokenKey }}
      {{- end }}
      - key: {{ $login.sessionKeyKey }}
        path: {{ $login.sessionKeyKey }}
{{- end -}}

{{/*
Egress of the page: the release's Review pods and (when it uses it) its Evaluation pods on their gRPC
port; the store comes from review-stack.networkPolicy.s3Egress. Review or Evaluation services outside the
release go in web.networkPolicy.extraEgress.
*/}}
{{- define "review-stack.web.egress" -}}
{{- $port := include "review-stack.grpc.containerPort" . -}}
{{- if .Values.review.enabled }}
- ports:
    - port: {{ $port }}
      protocol: TCP
  to:
    - podSelector:
        matchLabels:
          {{- include "review-stack.selectorLabels" (dict "root" . "component" "review") | nindent 10 }}
{{- end }}
{{- if include "review-stack.web.usesReleaseEvaluation" . }}
- ports:
    - port: {{ $port }}
      protocol: TCP
  to:
    - podSelector:
        matchLabels:
          {{- include "review-stack.selectorLabels" (dict "root" . "component" "evaluation") | nindent 10 }}
{{- end }}
{{- end -}}

{{/* Who may open the page: anyone, or the peers of web.networkPolicy.from (e.g. the ingress controller). */}}
{{- define "review-stack.web.ingress" -}}
- ports:
    - port: http
      protocol: TCP
  {{- with .Values.web.networkPolicy.from }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
The rule the Review and Evaluation policies add for the page's pods (they call the gRPC port even when
networkPolicy.allowExternal=false). Usage: include "review-stack.web.clientIngress" (dict "root" $ "when" true)
*/}}
{{- define "review-stack.web.clientIngress" -}}
{{- if and .root.Values.web.enabled .when }}
- ports:
    - port: grpc
      protocol: TCP
  from:
    - podSelector:
        matchLabels:
          {{- include "review-stack.selectorLabels" (dict "root" .root "component" "web") | nindent 10 }}
{{- end }}
{{- end -}}
