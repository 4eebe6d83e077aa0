{{/* Chart name, or nameOverride. */}}
{{- define "user-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>" (63 characters at most), or fullnameOverride. */}}
{{- define "user-service.fullname" -}}
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

{{/* Labels that select the server pods (Services, PDB, spread, monitors).
Never change them after install: a Deployment's selector is immutable. The
component keeps the migration Job's and the test's pods out of the Service. */}}
{{- define "user-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "user-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* The standard app.kubernetes.io/* labels, without the component. */}}
{{- define "user-service.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "user-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: user-service
{{- end -}}

{{/* Labels of the server's objects. */}}
{{- define "user-service.labels" -}}
{{ include "user-service.commonLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "user-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "user-service.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image.repository:image.tag, the tag defaulting to the chart's appVersion. */}}
{{- define "user-service.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding the PostgreSQL URL, and its key. */}}
{{- define "user-service.dbSecretName" -}}
{{- default (printf "%s-db" (include "user-service.fullname" .)) .Values.store.postgres.existingSecret -}}
{{- end -}}

{{/* Environment shared by the server and the migration Job. */}}
{{- define "user-service.storeEnv" -}}
{{- if eq .Values.store.type "postgres" }}
- name: USER_SERVICE__STORE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "user-service.dbSecretName" . }}
      key: {{ .Values.store.postgres.key }}
- name: USER_SERVICE__STORE__MAX_CONNECTIONS
  value: {{ .Values.store.postgres.maxConnections | quote }}
{{- end }}
{{- end -}}

{{/* Pod and container hardening shared by every workload. */}}
{{- define "user-service.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "user-service.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Where the configuration file is mounted. */}}
{{- define "user-service.configPath" -}}/etc/user-service/config.toml{{- end -}}

{{/* Where the TLS Secret is mounted (a directory: renewals show up in it). */}}
{{- define "user-service.tlsDir" -}}/etc/user-service/tls{{- end -}}

{{/* grpc or http: TLS forces http, the kubelet's gRPC probes are plaintext. */}}
{{- define "user-service.probeType" -}}
{{- if .Values.tls.enabled -}}http{{- else -}}{{ .Values.probes.type }}{{- end -}}
{{- end -}}

{{/* Refuses value combinations that render valid objects but misbehave. */}}
{{- define "user-service.validate" -}}
{{- $c := .Values.config -}}
{{- $needed := add $c.drainDelaySeconds $c.shutdownTimeoutSeconds 5 -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least config.drainDelaySeconds + config.shutdownTimeoutSeconds + 5 (%d), or Kubernetes kills pods mid-drain" (int .Values.terminationGracePeriodSeconds) (int $needed)) -}}
{{- end -}}
{{- if and (eq .Values.store.type "postgres") (not .Values.store.postgres.existingSecret) (not .Values.store.postgres.url) -}}
{{- fail "store.type=postgres needs store.postgres.existingSecret (recommended) or store.postgres.url" -}}
{{- end -}}
{{- if and (eq .Values.store.type "memory") (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail "store.type=memory keeps users per process: with more than one replica each would see different users; use store.type=postgres or replicaCount=1" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.gatewayAPI.enabled (not .Values.gatewayAPI.parentRefs) -}}
{{- fail "gatewayAPI.enabled needs gatewayAPI.parentRefs (the Gateway to attach the GRPCRoute to)" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled needs tls.secretName (a Secret with tls.crt and tls.key, e.g. from a cert-manager Certificate)" -}}
{{- end -}}
{{- if and .Values.tls.clientAuth (not .Values.tls.enabled) -}}
{{- fail "tls.clientAuth needs tls.enabled" -}}
{{- end -}}
{{- if and .Values.service.loadBalancerSourceRanges (ne .Values.service.type "LoadBalancer") -}}
{{- fail "service.loadBalancerSourceRanges only applies to service.type=LoadBalancer" -}}
{{- end -}}
{{- end -}}
