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

{{/*
The API version of MutatingAdmissionPolicy the cluster serves (v1beta1 in
1.34, behind a feature gate and runtime config), or nothing: admission then
cannot record who asked for a session.
*/}}
{{- define "ephemera.mutatingPolicyVersion" -}}
{{- if .Values.admissionPolicy.enabled -}}
{{- if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" -}}
admissionregistration.k8s.io/v1
{{- else if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy" -}}
admissionregistration.k8s.io/v1beta1
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Whether editors may be given DebugSessions: only where admission checks the
author's own rights and records who asked, and the operator re-checks that
requester before each container.
*/}}
{{- define "ephemera.aggregateEditor" -}}
{{- if and (include "ephemera.admissionPolicy" .) (include "ephemera.mutatingPolicyVersion" .) .Values.security.requireRequester -}}
true
{{- end -}}
{{- end -}}
