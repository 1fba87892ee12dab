{{- define "alcove.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name alone when it already contains the chart's. */}}
{{- define "alcove.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "alcove.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alcove.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "alcove.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "alcove.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: alcove
{{- end -}}

{{- define "alcove.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alcove.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "alcove.gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "alcove.gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: alcove
{{- end -}}

{{- define "alcove.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "alcove.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "alcove.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The operator's configuration file (see docs/operations.md). */}}
{{- define "alcove.config" -}}
inferenceImage: {{ printf "%s:%s" .Values.inferenceImage.repository .Values.inferenceImage.tag | quote }}
gatewayNamespaces: {{ default (list .Release.Namespace) .Values.gatewayNamespaces | toYaml | nindent 2 }}
platformModels: {{ toYaml .Values.platformModels | nindent 2 }}
tiers: {{ toYaml .Values.tiers | nindent 2 }}
retention: {{ toYaml .Values.retention | nindent 2 }}
modelSources: {{ toYaml .Values.modelSources | nindent 2 }}
billing:
  reportIntervalSeconds: {{ .Values.billing.reportIntervalSeconds }}
  prices: {{ toYaml .Values.billing.prices | nindent 4 }}
{{- end -}}

{{- define "alcove.dashboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alcove.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dashboard
{{- end -}}

{{- define "alcove.dashboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "alcove.dashboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: alcove
{{- end -}}

{{- /* The model catalogue as `alcove dashboard --model` takes it: NAME=FORMAT[:PATH],… */ -}}
{{- define "alcove.dashboard.models" -}}
{{- $out := list }}
{{- range .Values.dashboard.models }}
{{- $out = append $out (ternary (printf "%s=%s:%s" .name .format (.path | default "")) (printf "%s=%s" .name .format) (not (empty .path))) }}
{{- end }}
{{- join "," $out }}
{{- end -}}
