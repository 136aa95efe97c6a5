{{/* Chart name, truncated to the 63 characters a DNS label may have. */}}
{{- define "pgway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, with the chart name unless already in it. */}}
{{- define "pgway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pgway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pgway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pgway.labels" -}}
helm.sh/chart: {{ include "pgway.chart" . }}
{{ include "pgway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pgway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pgway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pgway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* host:port for a listen address; IPv6 hosts get brackets. */}}
{{- define "pgway.listen" -}}
{{- $host := .host }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host (int .port) }}
{{- else }}
{{- printf "%s:%d" $host (int .port) }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: above PGWAY_SHUTDOWN_GRACE plus the preStop sleep. The default
leaves room for twice the grace: a QueryStream still running when the grace ends is given a
second grace period before pgway exits (measured: 6.2 s with PGWAY_SHUTDOWN_GRACE=3s).
*/}}
{{- define "pgway.terminationGrace" -}}
{{- $grace := int .Values.config.shutdownGraceSeconds }}
{{- $sleep := int .Values.lifecycle.preStopSleepSeconds }}
{{- $floor := add $grace $sleep }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor $grace 5 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $floor }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above config.shutdownGraceSeconds + lifecycle.preStopSleepSeconds (%d), or the kubelet kills pgway before its calls drain" (int .Values.terminationGracePeriodSeconds) $floor) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The connection budget: the most pods that can run at once (HPA maxReplicas or replicaCount,
plus maxSurge during a rolling update) times (poolMax + 1: the pool, which the gRPC and
PostgreSQL doors share, plus the readiness check's own connection). With database.maxConnections set, rendering fails when that exceeds
maxConnections - reservedConnections. Prints the per-pod and total numbers as "perPod total".
*/}}
{{- define "pgway.connectionBudget" -}}
{{- $poolMax := 20 }}
{{- if not (kindIs "invalid" .Values.config.poolMax) }}
{{- $poolMax = int .Values.config.poolMax }}
{{- end }}
{{- /* The binary's default: 0 with the PostgreSQL door on, else 5 (or poolMax when lower). */}}
{{- $poolMin := ternary 0 (min 5 $poolMax | int) .Values.postgres.enabled }}
{{- if not (kindIs "invalid" .Values.config.poolMin) }}
{{- $poolMin = int .Values.config.poolMin }}
{{- end }}
{{- if gt $poolMin $poolMax }}
{{- fail (printf "config.poolMin (%d) is above config.poolMax (%d)" $poolMin $poolMax) }}
{{- end }}
{{- $replicas := int .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- $replicas = int .Values.autoscaling.maxReplicas }}
{{- end }}
{{- $surge := 0 }}
{{- if eq .Values.updateStrategy.type "RollingUpdate" }}
{{- $s := dig "rollingUpdate" "maxSurge" 1 .Values.updateStrategy }}
{{- if kindIs "string" $s }}
{{- $pct := int (trimSuffix "%" $s) }}
{{- $surge = div (add (mul $replicas $pct) 99) 100 }}
{{- else }}
{{- $surge = int $s }}
{{- end }}
{{- end }}
{{- $perPod := add $poolMax 1 }}
{{- $total := mul (add $replicas $surge) $perPod }}
{{- if not (kindIs "invalid" .Values.database.maxConnections) }}
{{- $budget := sub (int .Values.database.maxConnections) (int .Values.database.reservedConnections) }}
{{- if gt $total $budget }}
{{- fail (printf "connection budget exceeded: up to %d pods (replicas %d + surge %d) × (config.poolMax %d + 1) = %d connections, above database.maxConnections %d - reservedConnections %d = %d. Lower config.poolMax or the replica count, or raise the server's max_connections." (add $replicas $surge) $replicas $surge $poolMax $total (int .Values.database.maxConnections) (int .Values.database.reservedConnections) $budget) }}
{{- end }}
{{- end }}
{{- printf "%d %d" $perPod $total }}
{{- end }}

{{/*
Callers' credentials, checked: pgway refuses to start without gRPC credentials unless
PGWAY_AUTH is none, and with both. Prints the PGWAY_*_FILE variables of auth.secretName's keys
as "NAME=path" lines: the gRPC credentials (none when the gateway runs open) and the PostgreSQL
door's users file (PGWAY_PG_AUTH_FILE), which is no gRPC credential and goes with either.
*/}}
{{- define "pgway.authFiles" -}}
{{- $auth := .Values.auth }}
{{- $config := .Values.config }}
{{- $open := eq (toString (index $config "auth")) "none" }}
{{- $files := list }}
{{- if $auth.tokensKey }}{{- $files = append $files (printf "PGWAY_AUTH_TOKENS_FILE=/etc/pgway/auth/%s" $auth.tokensKey) }}{{- end }}
{{- if $auth.jwtSecretKey }}{{- $files = append $files (printf "PGWAY_JWT_SECRET_FILE=/etc/pgway/auth/%s" $auth.jwtSecretKey) }}{{- end }}
{{- if $auth.jwksKey }}{{- $files = append $files (printf "PGWAY_JWT_JWKS_FILE=/etc/pgway/auth/%s" $auth.jwksKey) }}{{- end }}
{{- $pgFile := list }}
{{- if $auth.pgAuthFileKey }}{{- $pgFile = list (printf "PGWAY_PG_AUTH_FILE=/etc/pgway/auth/%s" $auth.pgAuthFileKey) }}{{- end }}
{{- if and (or $files $pgFile) (not $auth.secretName) }}
{{- fail "auth.tokensKey / auth.jwtSecretKey / auth.jwksKey / auth.pgAuthFileKey need auth.secretName: the Secret they are keys of" }}
{{- end }}
{{- if and $auth.secretName (not (or $files $pgFile)) }}
{{- fail (printf "auth.secretName (%s) names no key: set auth.tokensKey and/or auth.jwtSecretKey / auth.jwksKey (and auth.pgAuthFileKey for the PostgreSQL door)" $auth.secretName) }}
{{- end }}
{{- if and $open $files }}
{{- fail "config.auth is none, but auth.secretName configures credentials too: pgway refuses to start with both, so unset one" }}
{{- end }}
{{- if not (or $open $files) }}
{{- fail "no caller authentication configured: pgway refuses to start without it. Set auth.secretName (a Secret mounted at /etc/pgway/auth) with auth.tokensKey and/or auth.jwtSecretKey / auth.jwksKey, or set config.auth=none to let anyone who reaches the gRPC port call (auth.pgAuthFileKey is for the PostgreSQL door only)" }}
{{- end }}
{{- if and (or $auth.jwtSecretKey $auth.jwksKey) (not (index $config "jwtAllowedRoles")) }}
{{- fail "auth.jwtSecretKey / auth.jwksKey accept JWTs: set config.jwtAllowedRoles to the roles they may run as (comma-separated, such as anon,authenticated)" }}
{{- end }}
{{- if eq (toString (index $config "authPublicHealth")) "false" }}
{{- fail "config.authPublicHealth=false makes the health service ask for credentials, which the chart's startup, liveness and readiness probes can't send: the pods would never become ready. Leave it null or true" }}
{{- end }}
{{- join "\n" (concat $files $pgFile) }}
{{- end }}

{{/* The container's environment: every PGWAY_* setting reachable from values. */}}
{{- define "pgway.env" -}}
{{- $authFiles := include "pgway.authFiles" . }}
- name: PGWAY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required: the name of a Secret holding the PostgreSQL URL (kubectl create secret generic pgway-database --from-literal=url=postgres://...)" .Values.database.existingSecret | quote }}
      key: {{ .Values.database.secretKey | quote }}
- name: PGWAY_GRPC_ADDR
  value: {{ include "pgway.listen" (dict "host" .Values.listenHost "port" .Values.containerPorts.grpc) | quote }}
- name: PGWAY_METRICS_ADDR
  value: {{ ternary (include "pgway.listen" (dict "host" .Values.listenHost "port" .Values.containerPorts.metrics)) "" .Values.metrics.enabled | quote }}
- name: PGWAY_PG_ADDR
  value: {{ ternary (include "pgway.listen" (dict "host" .Values.listenHost "port" .Values.containerPorts.postgres)) "" .Values.postgres.enabled | quote }}
- name: PGWAY_SHUTDOWN_GRACE
  value: {{ printf "%ds" (int .Values.config.shutdownGraceSeconds) | quote }}
{{- range $key, $value := .Values.config }}
{{- if and (not (kindIs "invalid" $value)) (ne $key "shutdownGraceSeconds") (ne (toString $value) "") }}
{{- $v := $value }}
{{- if kindIs "float64" $v }}{{- $v = int64 $v }}{{- end }}
- name: {{ printf "PGWAY_%s" ($key | snakecase | upper) }}
  value: {{ toString $v | quote }}
{{- end }}
{{- end }}
{{- with .Values.tls.secretName }}
- name: PGWAY_TLS_CERT
  value: "/etc/pgway/tls/tls.crt"
- name: PGWAY_TLS_KEY
  value: "/etc/pgway/tls/tls.key"
{{- end }}
{{- with (include "pgway.tlsClientCA" .) }}
- name: PGWAY_TLS_CLIENT_CA
  value: {{ . | quote }}
{{- end }}
{{- range (splitList "\n" $authFiles) }}
{{- with . }}
- name: {{ index (splitList "=" .) 0 }}
  value: {{ index (splitList "=" .) 1 | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The client CA file for mutual TLS; empty without. */}}
{{- define "pgway.tlsClientCA" -}}
{{- if .Values.tls.clientCAKey }}
{{- if not .Values.tls.secretName }}
{{- fail "tls.clientCAKey needs tls.secretName: client certificates are asked for only over TLS" }}
{{- end }}
{{- printf "/etc/pgway/tls/%s" .Values.tls.clientCAKey }}
{{- end }}
{{- end }}

{{/* A probe: native gRPC, or exec through `pgway probe` (same exit codes as grpc_health_probe). */}}
{{- define "pgway.probe" -}}
{{- $root := .root }}
{{- $mode := $root.Values.probes.mode }}
{{- $tls := $root.Values.tls }}
{{- if $tls.secretName }}
{{- if eq $mode "grpc" }}
{{- fail "probes.mode grpc can't check a TLS port (the kubelet's gRPC probes speak plaintext only): use auto or exec with tls.secretName" }}
{{- end }}
{{- $mode = "exec" }}
{{- end }}
{{- if eq $mode "auto" }}
{{- $mode = ternary "grpc" "exec" (semverCompare ">=1.24-0" $root.Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if eq $mode "grpc" }}
grpc:
  port: {{ int $root.Values.containerPorts.grpc }}
  service: {{ .service | quote }}
{{- else }}
exec:
  command:
    - /pgway
    - probe
    - {{ printf "-addr=%s:%d" (ternary "[::1]" "127.0.0.1" (contains ":" $root.Values.listenHost)) (int $root.Values.containerPorts.grpc) | quote }}
    {{- if $tls.secretName }}
    - "-tls"
    - {{ printf "-tls-ca-cert=/etc/pgway/tls/%s" $tls.probeCAKey | quote }}
    - {{ printf "-tls-server-name=%s" (default (printf "%s.%s.svc" (include "pgway.fullname" $root) $root.Release.Namespace) $tls.probeServerName) | quote }}
    {{- if $tls.clientCAKey }}
    - "-tls-client-cert=/etc/pgway/tls/tls.crt"
    - "-tls-client-key=/etc/pgway/tls/tls.key"
    {{- end }}
    {{- end }}
    - {{ printf "-service=%s" .service | quote }}
{{- end }}
{{- with .settings }}
{{ toYaml . }}
{{- end }}
{{- end }}
