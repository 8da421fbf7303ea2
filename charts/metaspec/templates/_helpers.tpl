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

{{/* The metrics Service's name: a DNS-1035 label (at most 63 characters, a letter first), unlike other object names. */}}
{{- define "metaspec.metricsServiceName" -}}
{{- $prefix := include "metaspec.fullname" . | trunc 55 | trimSuffix "-" -}}
{{- if regexMatch "^[a-z]" $prefix -}}
{{- printf "%s-metrics" $prefix -}}
{{- else -}}
{{- printf "metrics-%s" $prefix -}}
{{- end -}}
{{- end -}}

{{/* The progress Service's name: a DNS-1035 label, like the metrics Service's. */}}
{{- define "metaspec.progressServiceName" -}}
{{- $prefix := include "metaspec.fullname" . | trunc 54 | trimSuffix "-" -}}
{{- if regexMatch "^[a-z]" $prefix -}}
{{- printf "%s-progress" $prefix -}}
{{- else -}}
{{- printf "progress-%s" $prefix -}}
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

{{/* The operator pod's labels: the chart's, `operator.podLabels`, and the selector labels, which podLabels may not change. */}}
{{- define "metaspec.podLabels" -}}
{{- $selector := include "metaspec.selectorLabels" . | fromYaml -}}
{{- range $key, $value := .Values.operator.podLabels -}}
{{- if and (hasKey $selector $key) (ne (toString $value) (get $selector $key)) -}}
{{- fail (printf "operator.podLabels.%s: the Deployment selects its pods by this label; it must stay %q" $key (get $selector $key)) -}}
{{- end -}}
{{- end -}}
{{- merge $selector .Values.operator.podLabels (include "metaspec.labels" . | fromYaml) | toYaml -}}
{{- end -}}

{{/* values.schema.json requires serviceAccount.name when serviceAccount.create is false. */}}
{{- define "metaspec.serviceAccountName" -}}
{{- default (include "metaspec.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* `repository:tag` of a component image; the tag defaults to the chart's appVersion. Call with (list $ .Values.components.trainer). */}}
{{- define "metaspec.componentImage" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- printf "%s:%v" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* The operator image, by digest when one is given. */}}
{{- define "metaspec.operatorImage" -}}
{{- $image := .Values.operator.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%v" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Refuses what values.schema.json cannot express: two ports on one number. */}}
{{- define "metaspec.validate" -}}
{{- if and .Values.metrics.enabled (eq (int .Values.operator.livenessPort) (int .Values.metrics.port)) -}}
{{- fail (printf "operator.livenessPort and metrics.port are both %v: the container would declare one port twice" .Values.metrics.port) -}}
{{- end -}}
{{- end -}}
