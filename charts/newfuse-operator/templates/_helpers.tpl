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
{{- end -}}

{{/* Read-only: kopf watches CRDs to start serving NewFuseAgents once the CRD exists. */}}
{{- define "newfuse.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end -}}
