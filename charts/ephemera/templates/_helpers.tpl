{{- define "ephemera.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ephemera.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ephemera.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ephemera.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ephemera.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Whether the admission policies are installed: asked for, and the cluster has
ValidatingAdmissionPolicy (GA in 1.30). Without them, creating a DebugSession
is not checked against its author's own rights (see docs/security.md).
*/}}
{{- define "ephemera.admissionPolicy" -}}
{{- if and .Values.admissionPolicy.enabled (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version) -}}
true
{{- end -}}
{{- end -}}

{{/*
The namespaces a release's policies govern: those it serves. Releases that
watch different namespaces can then run side by side.
*/}}
{{- define "ephemera.policyScope" -}}
{{- if .Values.watchNamespace -}}
matchResources:
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Values.watchNamespace | quote }}
{{- end -}}
{{- end -}}
