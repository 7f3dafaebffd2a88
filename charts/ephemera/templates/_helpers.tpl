{{- define "ephemera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The name of every object, cluster-scoped ones included: releases that are to
run side by side must differ in it (another release name or fullnameOverride).
*/}}
{{- define "ephemera.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "ephemera.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ephemera.labels" -}}
{{ include "ephemera.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ephemera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ephemera.name" . }}
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
