{{/* Names and labels shared by every object of the chart. */}}
{{- define "newfuse.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "newfuse.labels" -}}
app.kubernetes.io/name: newfuse-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "newfuse.selectorLabels" -}}
app.kubernetes.io/name: newfuse-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "newfuse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "newfuse.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator's permissions: exactly the verbs and resources it uses, no wildcards. */}}
{{- define "newfuse.rules" -}}
- apiGroups: ["newfuse.io"]
  resources: ["newfuseagents"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["newfuse.io"]
  resources: ["newfuseagents/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["controllerrevisions"]
  verbs: ["get", "create"]
{{- /* Golden tasks (spec.rollout.analysis.goldenTasks) are read from a ConfigMap, never written. */}}
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
{{- if or .Values.signing.perFleetKeys .Values.redis.perFleetUsers }}
{{- /* Each fleet's own key or Redis user lives in a Secret the fleet owns. */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
{{- end }}
{{- end -}}

{{/* Read-only: kopf watches CRDs to start serving NewFuseAgents once the CRD exists. */}}
{{- define "newfuse.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end -}}

{{/* Names of the Secrets the chart may generate or reference. */}}
{{- define "newfuse.signingSecretName" -}}
{{- default (printf "%s-signing" (include "newfuse.fullname" .)) .Values.signing.existingSecret -}}
{{- end -}}

{{- define "newfuse.redisName" -}}
{{- printf "%s-redis" (include "newfuse.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "newfuse.redisSelectorLabels" -}}
app.kubernetes.io/name: newfuse-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The PromQL label matchers that select the operator's own series in alert expressions. */}}
{{- define "newfuse.ruleSelector" -}}
{{- .Values.metrics.prometheusRule.selector | default (printf "job=%q" (printf "%s-metrics" (include "newfuse.fullname" .))) -}}
{{- end -}}

{{/* A Secret value generated once and then kept: the live Secret's value on upgrade (lookup),
     else a new random one. `helm template` and --dry-run=client cannot look up, so they always
     show a new value. Call with (list $ secretName dataKey length). Returns the base64 value. */}}
{{- define "newfuse.keptRandom" -}}
{{- $ := index . 0 -}}
{{- $existing := lookup "v1" "Secret" $.Release.Namespace (index . 1) -}}
{{- if and $existing $existing.data (hasKey $existing.data (index . 2)) -}}
{{- index $existing.data (index . 2) -}}
{{- else -}}
{{- randAlphaNum (index . 3) | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Refuse value combinations the schema cannot express, with a message naming the fix. */}}
{{- define "newfuse.validate" -}}
{{- if and (not .Values.redis.existingSecret) (not .Values.redis.internal.enabled) (contains "@" .Values.redis.url) -}}
{{- fail "redis.url must not contain credentials (it has an '@'): values end up in plain text in the Deployment. Put the full URL in a Secret and set redis.existingSecret (and redis.existingSecretKey) instead." -}}
{{- end -}}
{{- if and .Values.redis.internal.enabled .Values.redis.existingSecret -}}
{{- fail "redis.internal.enabled and redis.existingSecret are mutually exclusive: choose the in-chart Redis (trials) or your own Redis (a Secret with its URL)." -}}
{{- end -}}
{{- $le := .Values.leaderElection -}}
{{- if and $le.enabled (not (and (lt (int $le.retryPeriodSeconds) (int $le.renewDeadlineSeconds)) (lt (int $le.renewDeadlineSeconds) (int $le.leaseDurationSeconds)))) -}}
{{- fail (printf "leaderElection needs retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds (got %v, %v, %v), or two replicas could both lead." $le.retryPeriodSeconds $le.renewDeadlineSeconds $le.leaseDurationSeconds) -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not $le.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: replicas without election would all reconcile the same fleets." -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled=true (the ServiceMonitor selects that Service)." -}}
{{- end -}}
{{- end -}}

{{/* The Redis URL (and its CA file) the operator and the gateway use. */}}
{{- define "newfuse.redisEnv" -}}
{{- if .Values.redis.internal.enabled }}
- name: NEWFUSE_REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ include "newfuse.redisName" . }}-url, key: url}
{{- else if .Values.redis.existingSecret }}
- name: NEWFUSE_REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.redis.existingSecret | quote }}, key: {{ .Values.redis.existingSecretKey | quote }}}
{{- else }}
- name: NEWFUSE_REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
{{- if .Values.redis.tls.caSecret.name }}
- name: NEWFUSE_REDIS_CA_FILE
  value: /etc/newfuse/redis-ca/ca.crt
{{- end }}
{{- end -}}

{{/* The gateway's labels: a name of its own, so that no selector of the operator picks it. */}}
{{- define "newfuse.gatewaySelectorLabels" -}}
app.kubernetes.io/name: newfuse-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "newfuse.gatewayLabels" -}}
{{ include "newfuse.gatewaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: fleet-api
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The gateway's URL as clients reach it: gateway.publicUrl, else its Service in the cluster. */}}
{{- define "newfuse.gatewayUrl" -}}
{{- if .Values.gateway.publicUrl -}}
{{- .Values.gateway.publicUrl -}}
{{- else -}}
{{- printf "http://%s-gateway.%s.svc:%d" (include "newfuse.fullname" .) .Release.Namespace (int .Values.gateway.port) -}}
{{- end -}}
{{- end -}}
