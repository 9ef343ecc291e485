{{- define "joinery.labels" -}}
app.kubernetes.io/name: joinery-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "joinery.selector" -}}
app.kubernetes.io/name: joinery-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
