{{/*
Names. The full name is cut to 44 characters so that "<fullname>-replica" stays within the
52 characters a StatefulSet name may have (its pods get a controller-revision-hash label).
*/}}
{{- define "glmfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "glmfleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 44 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "glmfleet.router.name" -}}{{ include "glmfleet.fullname" . }}-router{{- end }}
{{- define "glmfleet.replica.name" -}}{{ include "glmfleet.fullname" . }}-replica{{- end }}
{{- define "glmfleet.config.name" -}}{{ include "glmfleet.fullname" . }}-config{{- end }}

{{- define "glmfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels common to every resource. */}}
{{- define "glmfleet.labels" -}}
helm.sh/chart: {{ include "glmfleet.chart" . }}
app.kubernetes.io/name: {{ include "glmfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: glmfleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "glmfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "glmfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Component labels: call with (dict "ctx" $ "component" "router"). */}}
{{- define "glmfleet.componentLabels" -}}
{{ include "glmfleet.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "glmfleet.componentSelectorLabels" -}}
{{ include "glmfleet.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "glmfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "glmfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "glmfleet.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the API key. */}}
{{- define "glmfleet.apiKeySecretName" -}}
{{- default (printf "%s-api-key" (include "glmfleet.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The env entry giving a container the API key (when auth.enabled). */}}
{{- define "glmfleet.apiKeyEnv" -}}
- name: GLMFLEET_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "glmfleet.apiKeySecretName" . }}
      key: {{ .Values.auth.secretKey }}
{{- end }}

{{/* Headless Service DNS name the router discovers replicas through. */}}
{{- define "glmfleet.replica.dnsName" -}}
{{- printf "%s.%s.svc.%s" (include "glmfleet.replica.name" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* The MODEL argument of `glmfleet serve`. */}}
{{- define "glmfleet.modelArg" -}}
{{- $m := .Values.model }}
{{- if eq $m.source "huggingface" }}{{ $m.huggingface.repo }}
{{- else if eq $m.source "path" }}{{ $m.path }}
{{- else }}demo
{{- end }}
{{- end }}

{{/* Whether the replica mounts a model/cache volume. */}}
{{- define "glmfleet.modelVolume" -}}
{{- if ne .Values.model.source "demo" }}true{{ end }}
{{- end }}

{{/* Effective replica terminationGracePeriodSeconds (fails when too short to drain). */}}
{{- define "glmfleet.replica.terminationGrace" -}}
{{- $r := .Values.replica }}
{{- $needed := add $r.preStopSleepSeconds $r.serve.shutdownTimeout }}
{{- if kindIs "invalid" $r.terminationGracePeriodSeconds }}
{{- add $needed 15 }}
{{- else if lt (int $r.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "replica.terminationGracePeriodSeconds (%v) must be at least preStopSleepSeconds + serve.shutdownTimeout (%v), or the drain is cut short" $r.terminationGracePeriodSeconds $needed) }}
{{- else }}
{{- $r.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Checks of combinations the schema cannot express. Included by the replica StatefulSet. */}}
{{- define "glmfleet.validate" -}}
{{- $m := .Values.model }}
{{- $s := $m.storage }}
{{- if and (eq $m.source "path") (has $s.type (list "volumeClaimTemplate" "emptyDir")) }}
{{- fail (printf "model.source=path needs weights already on the volume: use model.storage.type existingClaim or hostPath, not %s" $s.type) }}
{{- end }}
{{- if and (eq $m.source "path") (not (hasPrefix (printf "%s/" (trimSuffix "/" $s.mountPath)) $m.path)) }}
{{- fail (printf "model.path (%s) must lie under model.storage.mountPath (%s)" $m.path $s.mountPath) }}
{{- end }}
{{- if and (eq $m.source "huggingface") $s.readOnly }}
{{- fail "model.storage.readOnly cannot be true with model.source=huggingface (the download writes to the volume)" }}
{{- end }}
{{- if and (eq $s.type "existingClaim") (ne $m.source "demo") (not $s.existingClaim) }}
{{- fail "model.storage.existingClaim must name a PersistentVolumeClaim when model.storage.type=existingClaim" }}
{{- end }}
{{- $sp := .Values.replica.startupProbe }}
{{- if lt (int (mul $sp.periodSeconds $sp.failureThreshold)) 900 }}
{{- fail (printf "replica.startupProbe allows %vs (periodSeconds × failureThreshold); weight loading needs at least 900s" (mul $sp.periodSeconds $sp.failureThreshold)) }}
{{- end }}
{{- if and .Values.auth.enabled .Values.auth.existingSecret .Values.auth.apiKey }}
{{- fail "set either auth.existingSecret or auth.apiKey, not both" }}
{{- end }}
{{- end }}

{{/* Render a value that may hold template expressions. */}}
{{- define "glmfleet.render" -}}
{{- if kindIs "string" .value }}
{{- tpl .value .ctx }}
{{- else }}
{{- tpl (toYaml .value) .ctx }}
{{- end }}
{{- end }}
