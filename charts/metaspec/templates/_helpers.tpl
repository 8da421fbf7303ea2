{{/* Chart name, a DNS label. */}}
{{- define "metaspec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: `<release>-<chart>`, or the release alone when it contains the chart name. */}}
{{- define "metaspec.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator pods: never change them after install (Deployment selectors are immutable). */}}
{{- define "metaspec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metaspec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "metaspec.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "metaspec.selectorLabels" . }}
app.kubernetes.io/part-of: metaspec
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "metaspec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "metaspec.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* `repository:tag` of a component image; the tag defaults to the chart's appVersion. Call with (list $ .Values.components.trainer). */}}
{{- define "metaspec.componentImage" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* The operator image, by digest when one is given. */}}
{{- define "metaspec.operatorImage" -}}
{{- $image := .Values.operator.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Refuses a namespace list without namespaces: the operator would watch nothing. */}}
{{- define "metaspec.watchedNamespaces" -}}
{{- if not .Values.watch.allNamespaces -}}
{{- required "watch.namespaces must list at least one namespace when watch.allNamespaces is false" (.Values.watch.namespaces | join ",") -}}
{{- end -}}
{{- end -}}
