{{- define "joinery.labels" -}}
app.kubernetes.io/name: joinery-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "joinery.selector" -}}
app.kubernetes.io/name: joinery-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* A shard gateway's labels; takes a dict: root, index. */ -}}
{{- define "joinery.shardLabels" -}}
{{ include "joinery.shardSelector" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- end -}}

{{- define "joinery.shardSelector" -}}
app.kubernetes.io/name: joinery-shard
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: shard-{{ .index }}
{{- end -}}


{{- /*
A gateway pod's spec. Takes a dict: root (the chart's context), args (more
arguments for `gateway serve`), shardClient (mount the certificate a
gateway answering from shards shows them).
*/ -}}
{{- define "joinery.pod" -}}
{{- $root := .root -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile: { type: RuntimeDefault }
terminationGracePeriodSeconds: 60
containers:
  - name: gateway
    image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag }}"
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args:
      - gateway
      - serve
      - --max-message-bytes={{ $root.Values.limits.maxMessageBytes | int64 }}
      - --max-streams-per-connection={{ $root.Values.limits.maxStreamsPerConnection | int64 }}
      - --handshake-timeout-secs={{ $root.Values.limits.handshakeTimeoutSecs | int64 }}
      - --max-connections={{ $root.Values.limits.maxConnections | int64 }}
      {{- range .args }}
      - {{ . }}
      {{- end }}
    env:
      - { name: JOINERY_LISTEN, value: "0.0.0.0:{{ $root.Values.service.grpcPort }}" }
      - { name: JOINERY_METRICS_LISTEN, value: "0.0.0.0:{{ $root.Values.service.metricsPort }}" }
      - { name: JOINERY_DATA_DIR, value: /var/lib/joinery }
      - { name: JOINERY_KEY_FILE, value: /etc/joinery/keys/gateway.key }
      - { name: JOINERY_AUDIT_KEY_FILE, value: /etc/joinery/keys/audit-signing.key }
      - { name: JOINERY_AGREEMENTS, value: /etc/joinery/agreements }
      - { name: JOINERY_TLS_CA, value: /etc/joinery/tls/ca.pem }
      - { name: JOINERY_TLS_CERT, value: /etc/joinery/tls/gateway.pem }
      - { name: JOINERY_TLS_KEY, value: /etc/joinery/tls/gateway.key }
      - { name: JOINERY_TLS_CRL, value: /etc/joinery/tls/crl.pem }
      - { name: JOINERY_LOG_FORMAT, value: json }
      - name: JOINERY_DATABASE_URL
        valueFrom:
          secretKeyRef:
            name: {{ $root.Values.database.secretName }}
            key: {{ $root.Values.database.secretKey }}
      {{- if $root.Values.otel.endpoint }}
      - { name: OTEL_EXPORTER_OTLP_ENDPOINT, value: {{ $root.Values.otel.endpoint | quote }} }
      {{- end }}
    ports:
      - { name: grpc, containerPort: {{ $root.Values.service.grpcPort }} }
      - { name: metrics, containerPort: {{ $root.Values.service.metricsPort }} }
    readinessProbe:
      httpGet: { path: /readyz, port: metrics }
      periodSeconds: 5
    livenessProbe:
      httpGet: { path: /healthz, port: metrics }
      periodSeconds: 10
      failureThreshold: 3
    resources: {{- toYaml $root.Values.resources | nindent 6 }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: { drop: [ALL] }
    volumeMounts:
      - { name: data, mountPath: /var/lib/joinery }
      - { name: tls, mountPath: /etc/joinery/tls, readOnly: true }
      - { name: keys, mountPath: /etc/joinery/keys, readOnly: true }
      - { name: agreements, mountPath: /etc/joinery/agreements, readOnly: true }
      {{- if .shardClient }}
      - { name: shard-client, mountPath: /etc/joinery/shard-client, readOnly: true }
      {{- end }}
# Secret modes in decimal: 256 is 0400 (a leading-zero octal reads
# as decimal 400 to a YAML 1.2 parser). With the fsGroup above,
# Kubernetes makes the files root-owned 0440, which the gateway
# accepts for a root-owned key.
volumes:
  - { name: data, emptyDir: {} }
  - name: tls
    secret: { secretName: {{ $root.Values.tlsSecretName }}, defaultMode: 256 }
  - name: keys
    secret: { secretName: {{ $root.Values.keysSecretName }}, defaultMode: 256 }
  - name: agreements
    configMap: { name: {{ $root.Values.agreementsConfigMap }} }
  {{- if .shardClient }}
  - name: shard-client
    secret: { secretName: {{ $root.Values.shards.clientSecretName }}, defaultMode: 256 }
  {{- end }}
{{- end -}}
