{{/* Chart name, at most 63 characters because it goes into label values. */}}
{{- define "visa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Base name of the chart's objects: fullnameOverride, or the release name with the chart name
appended unless the release name already contains it. At most 52 characters, so that suffixes
such as "-catalogue" keep names within the 63 characters of a label value.
*/}}
{{- define "visa.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "visa.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of the cluster-scoped objects, which must differ between releases in two namespaces. */}}
{{- define "visa.clusterObjectName" -}}
{{- printf "%s-%s-node-reader" .Release.Namespace (include "visa.fullname" .) | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{- define "visa.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "visa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: visa
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "api"). */}}
{{- define "visa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "visa.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "visa.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "visa.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name the existing ServiceAccount in the release namespace" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "visa.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Checks the values that have no usable default, so that helm install and helm template fail at
once with a message instead of rendering pods that crash at start.
*/}}
{{- define "visa.validate" -}}
{{- if not .Values.database.existingSecret -}}
{{- $url := required "database.url or database.existingSecret is required: give the URL of the site's MariaDB or MySQL database, mysql://USER:PASSWORD@HOST:PORT/DATABASE" .Values.database.url -}}
{{- if hasPrefix "sqlite:" $url -}}
{{- fail "database.url is a SQLite URL, which the chart rejects: SQLite cannot be shared by several API replicas and workers; give a MariaDB or MySQL URL, mysql://USER:PASSWORD@HOST:PORT/DATABASE" -}}
{{- end -}}
{{- end -}}
{{- if not .Values.redis.existingSecret -}}
{{- $_ := required "redis.url or redis.existingSecret is required: give the URL of the site's Redis, redis://[:PASSWORD@]HOST:PORT/[DB]" .Values.redis.url -}}
{{- end -}}
{{- if and (not .Values.token.existingSecret) .Values.token.value (lt (len .Values.token.value) 16) -}}
{{- fail "token.value is shorter than 16 characters: give a long random token, for example the output of openssl rand -hex 32" -}}
{{- end -}}
{{- end -}}

{{/*
VISA's token: token.value, else the token of the Secret this release made before (so upgrades
keep it), else a new random one. lookup returns nothing under helm template and dry runs.
*/}}
{{- define "visa.token" -}}
{{- if .Values.token.value -}}
{{- .Values.token.value -}}
{{- else -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "visa.fullname" .) -}}
{{- if and $secret $secret.data (hasKey $secret.data "token") -}}
{{- index $secret.data "token" | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Secret and key that hold a setting: its existingSecret and existingSecretKey, else the chart's
Secret and the key given. Call with (dict "root" $ "setting" .Values.database "key" "database-url").
*/}}
{{- define "visa.secretName" -}}
{{- default (include "visa.fullname" .root) .setting.existingSecret -}}
{{- end -}}

{{- define "visa.secretKey" -}}
{{- if .setting.existingSecret -}}
{{- .setting.existingSecretKey -}}
{{- else -}}
{{- .key -}}
{{- end -}}
{{- end -}}

{{- define "visa.secretKeyRef" -}}
name: {{ include "visa.secretName" . }}
key: {{ include "visa.secretKey" . }}
{{- end -}}

{{- define "visa.ldapConfigured" -}}
{{- if or .Values.ldap.existingSecret .Values.ldap.bindPassword -}}true{{- end -}}
{{- end -}}

{{/* Environment of both binaries; see jobs/src/settings.rs for what each variable sets. */}}
{{- define "visa.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: VISA_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- include "visa.secretKeyRef" (dict "root" . "setting" .Values.database "key" "database-url") | nindent 6 }}
- name: VISA_REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- include "visa.secretKeyRef" (dict "root" . "setting" .Values.redis "key" "redis-url") | nindent 6 }}
{{- with .Values.redis.queue }}
- name: VISA_QUEUE
  value: {{ . | quote }}
{{- end }}
- name: VISA_CATALOGUE
  value: /etc/visa/catalogue/catalogue.yaml
- name: VISA_NAMESPACE
  value: {{ .Values.instances.namespace | quote }}
- name: VISA_ENVIRONMENT
  value: {{ .Values.instances.environment | quote }}
{{- with .Values.instances.storageClass }}
- name: VISA_STORAGE_CLASS
  value: {{ . | quote }}
{{- end }}
- name: VISA_TIME_ZONE
  value: {{ .Values.instances.timeZone | quote }}
{{- with .Values.instances.imagePullSecrets }}
- name: VISA_IMAGE_PULL_SECRETS
  value: {{ join "," . | quote }}
{{- end }}
- name: VISA_VOLUME_MOUNT_PATH
  value: {{ .Values.instances.volumeMountPath | quote }}
- name: VISA_HEARTBEAT_SECONDS
  value: {{ .Values.heartbeat.seconds | quote }}
- name: VISA_MISSED_HEARTBEATS
  value: {{ .Values.heartbeat.missed | quote }}
{{- end -}}

{{/* Pod annotations that change when the catalogue or an inline secret value changes, so that
helm upgrade restarts the pods that read them at start. */}}
{{- define "visa.configChecksums" -}}
checksum/catalogue: {{ .Values.catalogue | sha256sum }}
checksum/secret-values: {{ list .Values.token.value .Values.database.url .Values.redis.url .Values.ldap.bindPassword | toJson | sha256sum }}
{{- end -}}

{{/*
topologySpreadConstraints with the component's selector added where a constraint has no
labelSelector; call with (dict "root" $ "component" "api" "constraints" LIST).
*/}}
{{- define "visa.topologySpreadConstraints" -}}
{{- $selector := include "visa.selectorLabels" (dict "root" .root "component" .component) | fromYaml -}}
{{- range .constraints }}
{{- $constraint := deepCopy . }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $constraint | nindent 2 | trim }}
{{- end }}
{{- end -}}
