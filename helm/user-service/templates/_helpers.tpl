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

{{/* The Secret the pods read the PostgreSQL URL from (key
store.postgres.key): the user's existingSecret, or the chart's own. */}}
{{- define "user-service.dbSecretName" -}}
{{- default (printf "%s-db" (include "user-service.fullname" .)) .Values.store.postgres.existingSecret -}}
{{- end -}}

{{/* The Secret holding the JWT secret, and where it is mounted. */}}
{{- define "user-service.jwtSecretName" -}}
{{- default (printf "%s-jwt" (include "user-service.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}
{{- define "user-service.jwtSecretDir" -}}/run/secrets/user-service{{- end -}}

{{/* The Secret the migration hook Job reads the URL from. An existingSecret
is there before the release, so the Job reads it too; the chart's own Secret
is a release resource, created only after pre-install hooks have run, so the
Job gets a hook-lived copy (templates/secret.yaml). */}}
{{- define "user-service.migrateSecretName" -}}
{{- default (printf "%s-db-migrate" (include "user-service.fullname" .)) .Values.store.postgres.existingSecret -}}
{{- end -}}

{{/* Store environment of the server and of the migration Job:
(dict "ctx" $ "secret" <Secret name>). */}}
{{- define "user-service.storeEnv" -}}
{{- $v := .ctx.Values -}}
{{- if eq $v.store.type "postgres" }}
- name: USER_SERVICE__STORE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $v.store.postgres.key }}
- name: USER_SERVICE__STORE__MAX_CONNECTIONS
  value: {{ $v.store.postgres.maxConnections | quote }}
{{- end }}
{{- end -}}

{{/* spec.replicas of the Deployment. Without autoscaling: replicaCount.
With it the HPA owns the count, but leaving the field out is not neutral:
on the upgrade that turns autoscaling on, Helm's three-way merge removes
the field the previous manifest set, the API server defaults it to 1, and
the Deployment drops to one pod until the HPA scales it back up. So the
chart keeps what the live Deployment runs now (which is what the HPA
chose; the patch then changes nothing), clamped to the HPA's range, and
starts at autoscaling.minReplicas on a first install or where `lookup`
cannot reach a cluster (helm template, --dry-run=client). */}}
{{- define "user-service.replicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- $a := .Values.autoscaling -}}
{{- $live := lookup "apps/v1" "Deployment" .Release.Namespace (include "user-service.fullname" .) -}}
{{- $current := int (dig "spec" "replicas" $a.minReplicas $live) -}}
{{- max (int $a.minReplicas) (min (int $a.maxReplicas) $current) -}}
{{- else -}}
{{- .Values.replicaCount -}}
{{- end -}}
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

{{/* The CPU the container gets, in millicores: resources.limits.cpu, or
resources.requests.cpu when there is no CPU limit (the process may then use
more, but is only sure of its request); 0 when neither is set. Kubernetes
quantities: cores as a number or string (2, 1.5, "1.5") or millicores
("500m"); the schema refuses other forms. Sub-millicore precision rounds up,
as the API server does. */}}
{{- define "user-service.cpuMillis" -}}
{{- $cpu := dig "limits" "cpu" "" .Values.resources -}}
{{- if not $cpu -}}
{{- $cpu = dig "requests" "cpu" "" .Values.resources -}}
{{- end -}}
{{- $s := toString $cpu -}}
{{- if not $cpu -}}
0
{{- else if hasSuffix "m" $s -}}
{{- ceil (round (float64 (trimSuffix "m" $s)) 6) | int -}}
{{- else -}}
{{- ceil (round (mulf (float64 $s) 1000) 6) | int -}}
{{- end -}}
{{- end -}}

{{/* grpc.max_concurrent_requests. config.maxConcurrentRequests when set
(0 = no limit); else ceil(cores x config.maxConcurrentRequestsPerCpu), at
least config.maxConcurrentRequestsMin: how many calls a pod can hold within
a deadline scales with the CPU it gets. */}}
{{- define "user-service.maxConcurrentRequests" -}}
{{- $c := .Values.config -}}
{{- if not (kindIs "invalid" $c.maxConcurrentRequests) -}}
{{- $c.maxConcurrentRequests | int -}}
{{- else -}}
{{- $millis := include "user-service.cpuMillis" . | int -}}
{{- if eq $millis 0 -}}
{{- fail "config.maxConcurrentRequests is derived from the container's CPU, but resources has neither limits.cpu nor requests.cpu: set resources.requests.cpu, or config.maxConcurrentRequests" -}}
{{- end -}}
{{- $perCpu := int $c.maxConcurrentRequestsPerCpu -}}
{{- max (int $c.maxConcurrentRequestsMin) (div (add (mul $millis $perCpu) 999) 1000) -}}
{{- end -}}
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
{{- fail (printf "store.type=memory keeps users inside each pod, so %s replicas would each see different users: use store.type=postgres (shared by every replica), or replicaCount=1 with autoscaling.enabled=false" (ternary "autoscaled" "several" .Values.autoscaling.enabled)) -}}
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

{{/* Refuses a custom resource whose CRD the cluster does not serve: the
install would otherwise fail half-way with "no matches for kind ...". On a
cluster Helm reads the served APIs from discovery; `helm template` knows
only the built-in ones plus --api-versions.
(dict "ctx" $ "api" "<group/version/Kind>" "value" "<the enabling value>" "crd" "<what to install>") */}}
{{- define "user-service.requireAPI" -}}
{{- if not (.ctx.Capabilities.APIVersions.Has .api) -}}
{{- fail (printf "%s=true needs the %s custom resource, which this cluster does not serve: install %s, or set %s=false (helm template: pass --api-versions %s)" .value .api .crd .value .api) -}}
{{- end -}}
{{- end -}}
