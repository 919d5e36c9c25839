{{/* Names and labels shared by the templates. */}}
{{- define "agentcell.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "agentcell.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: agentcell
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "agentcell.operatorName" -}}
{{ include "agentcell.fullname" . }}-operator
{{- end -}}

{{- define "agentcell.nodeName" -}}
{{ include "agentcell.fullname" . }}-node
{{- end -}}

{{- define "agentcell.operatorSelector" -}}
app.kubernetes.io/name: agentcell-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentcell.nodeSelectorLabels" -}}
app.kubernetes.io/name: agentcell-node
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentcell.image" -}}
{{ .image.repository }}:{{ default .appVersion .image.tag }}
{{- end -}}
