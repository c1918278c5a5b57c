{{/*
Credentials: where each secret lives and how it reaches the app.

Every secret reaches the app as an environment variable from a secretKeyRef; URLs that need a
password are assembled by the kubelet with $(VAR) expansion. So no credential is ever written
into a ConfigMap or into a pod spec. Three Secrets may be involved:
  <fullname>               the chart's own Secret: apiToken and the externalNats/externalRedis URLs
  <release>-nats-auth      kiqstack's NATS login (generated, or nats.auth.existingSecret)
  <release>-valkey-users   the Valkey users' passwords (generated, or valkey.auth.usersExistingSecret)
Each one is read only by the pods that need it (the NATS server never sees the Valkey password).
*/}}

{{/*
The data of an existing Secret of the release namespace (base64 values, as stored), {} when it
does not exist or when there is no cluster (helm template, --dry-run). Every lookup of the chart
goes through here, so the chart tests can stand in for the cluster (tests/chart, "lookup").
Call with (dict "ctx" $ "name" "<secret>").
*/}}
{{- define "kiqstack.lookupSecretData" -}}
{{- $obj := lookup "v1" "Secret" .ctx.Release.Namespace .name | default dict }}
{{- get $obj "data" | default dict | toJson }}
{{- end }}

{{/*
What the Secret <name> already holds under <key> (base64), else <value> base64-encoded: upgrades
keep generated passwords. Generated values are alphanumeric, so they are safe inside URLs.
Call with (dict "ctx" $ "name" "<secret>" "key" "<key>" "value" (randAlphaNum 32)).
*/}}
{{- define "kiqstack.keptOr" -}}
{{- $old := include "kiqstack.lookupSecretData" (dict "ctx" .ctx "name" .name) | fromJson }}
{{- get $old .key | default (.value | b64enc) }}
{{- end }}

{{/* ---------------------------------------------------------------- NATS */}}

{{/*
Host and client port of the NATS subchart's Service.
*/}}
{{- define "kiqstack.nats.host" -}}
{{- $port := dig "config" "nats" "port" 4222 .Values.nats }}
{{- printf "%s:%v" (include "kiqstack.nats.fullname" .) $port }}
{{- end }}

{{/*
Secret with kiqstack's NATS login (keys user, password). The nats subchart reads the same name
through the $tplYaml value of nats.container.env in values.yaml: keep both expressions equal.
*/}}
{{- define "kiqstack.nats.authSecretName" -}}
{{- dig "auth" "existingSecret" "" .Values.nats | default (printf "%s-nats-auth" .Release.Name) }}
{{- end }}

{{- define "kiqstack.nats.generateAuth" -}}
{{- if and .Values.nats.enabled (not (dig "auth" "existingSecret" "" .Values.nats)) }}true{{ end }}
{{- end }}

{{/* ---------------------------------------------------------------- Valkey */}}

{{/*
Host and port of the Valkey subchart's Service.
*/}}
{{- define "kiqstack.valkey.host" -}}
{{- $port := dig "service" "port" 6379 .Values.valkey }}
{{- printf "%s:%v" (include "kiqstack.valkey.fullname" .) $port }}
{{- end }}

{{- define "kiqstack.valkey.authEnabled" -}}
{{- if and .Values.valkey.enabled (dig "auth" "enabled" false .Values.valkey) }}true{{ end }}
{{- end }}

{{/*
The default of valkey.auth.usersExistingSecret, rendered: the Secret kiqstack creates itself.
*/}}
{{- define "kiqstack.valkey.generatedUsersSecret" -}}
{{- printf "%s-valkey-users" .Release.Name }}
{{- end }}

{{/*
Where the Valkey "default" user's password lives: (dict "name" <secret> "key" <key>), as the
valkey chart resolves it (templates/deploy_valkey.yaml): usersExistingSecret, templated in the
subchart's context, key aclUsers.default.passwordKey (default "default"); without
usersExistingSecret, the inline password in the subchart's <valkey>-auth Secret.
*/}}
{{- define "kiqstack.valkey.passwordSecret" -}}
{{- $auth := .Values.valkey.auth }}
{{- if $auth.usersExistingSecret }}
{{- $sub := dict "Values" .Values.valkey "Release" .Release "Chart" (dict "Name" "valkey") "Capabilities" .Capabilities "Template" .Template }}
{{- $key := dig "aclUsers" "default" "passwordKey" "default" $auth }}
{{- dict "name" (tpl $auth.usersExistingSecret $sub) "key" $key | toJson }}
{{- else }}
{{- dict "name" (printf "%s-auth" (include "kiqstack.valkey.fullname" .)) "key" "default-password" | toJson }}
{{- end }}
{{- end }}

{{/*
kiqstack creates the users Secret while valkey.auth.usersExistingSecret keeps its default name.
*/}}
{{- define "kiqstack.valkey.generateUsers" -}}
{{- if include "kiqstack.valkey.authEnabled" . }}
{{- $ref := include "kiqstack.valkey.passwordSecret" . | fromJson }}
{{- if eq $ref.name (include "kiqstack.valkey.generatedUsersSecret" .) }}true{{ end }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- the chart's own Secret */}}

{{- define "kiqstack.secretName" -}}
{{- include "kiqstack.fullname" . }}
{{- end }}

{{/*
The values of the chart's own Secret, unencoded, as JSON: API_TOKEN, NATS_URL, REDIS_URL (only
those the values set).
*/}}
{{- define "kiqstack.secretData" -}}
{{- $data := dict }}
{{- with .Values.apiToken }}{{ $_ := set $data "API_TOKEN" . }}{{ end }}
{{- if and (not .Values.nats.enabled) .Values.externalNats.url }}
{{- $_ := set $data "NATS_URL" .Values.externalNats.url }}
{{- end }}
{{- if and (not .Values.valkey.enabled) .Values.externalRedis.url }}
{{- $_ := set $data "REDIS_URL" .Values.externalRedis.url }}
{{- end }}
{{- toJson $data }}
{{- end }}

{{- define "kiqstack.createSecret" -}}
{{- if include "kiqstack.secretData" . | fromJson }}true{{ end }}
{{- end }}

{{/*
Salt of the checksum/secret annotation (base64), kept in the chart's Secret under "checksum-salt".
Computed once per render and memoised on the root context, so the Secret and both Deployments
agree even when it is new.
*/}}
{{- define "kiqstack.checksumSalt" -}}
{{- if not (hasKey . "kiqstackChecksumSalt") }}
{{- $salt := include "kiqstack.keptOr" (dict "ctx" . "name" (include "kiqstack.secretName" .) "key" "checksum-salt" "value" (randAlphaNum 64)) }}
{{- $_ := set . "kiqstackChecksumSalt" $salt }}
{{- end }}
{{- get . "kiqstackChecksumSalt" }}
{{- end }}

{{/*
checksum/secret rolls the pods when a value of the chart's Secret changes. A plain sha256 of the
Secret (what it used to be) lets anyone who can read a Deployment test guesses of the API token
offline, at billions a second. So the hash also covers a random 64-character salt that is
generated once and lives only in the Secret (kept across upgrades through lookup): the
annotation still changes whenever a value changes, but reveals nothing about it. (A generation
counter bumped by hand would reveal nothing either, but a forgotten bump leaves pods on an old
token.) Without a cluster to look the salt up in (helm template, GitOps renderers) each render
draws a new salt and the pods roll on every apply: there, use existingSecret /
externalNats.existingSecret / externalRedis.existingSecret, which create no chart Secret at all.
*/}}
{{- define "kiqstack.secretChecksum" -}}
{{- printf "%s\n%s" (include "kiqstack.checksumSalt" .) (include "kiqstack.secretData" .) | sha256sum }}
{{- end }}

{{/* ---------------------------------------------------------------- env of the app */}}

{{/*
API_TOKEN from the existing Secret or from the chart's Secret (nothing when the API is open).
Used by the app containers and the helm test pod.
*/}}
{{- define "kiqstack.apiTokenEnv" -}}
{{- if .Values.existingSecret }}
- name: API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: {{ .Values.existingSecretKey }}
{{- else if .Values.apiToken }}
- name: API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "kiqstack.secretName" . }}
      key: API_TOKEN
{{- end }}
{{- end }}

{{- define "kiqstack.hasApiToken" -}}
{{- if or .Values.apiToken .Values.existingSecret }}true{{ end }}
{{- end }}

{{/*
Environment entries of the app that come from Secrets: NATS_URL, REDIS_URL (unless the Valkey
subchart runs without auth: then it is in the ConfigMap) and API_TOKEN. The variables a URL
expands must come before it ($(VAR) only sees earlier entries).
*/}}
{{- define "kiqstack.secretEnv" -}}
{{- if .Values.nats.enabled }}
{{- $name := include "kiqstack.nats.authSecretName" . }}
- name: KIQSTACK_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: user
- name: KIQSTACK_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: password
- name: NATS_URL
  value: {{ printf "nats://$(KIQSTACK_NATS_USER):$(KIQSTACK_NATS_PASSWORD)@%s" (include "kiqstack.nats.host" .) | quote }}
{{- else }}
- name: NATS_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.externalNats.existingSecret }}
      name: {{ .Values.externalNats.existingSecret }}
      key: {{ .Values.externalNats.existingSecretKey }}
      {{- else }}
      name: {{ include "kiqstack.secretName" . }}
      key: NATS_URL
      {{- end }}
{{- end }}
{{- if include "kiqstack.valkey.authEnabled" . }}
{{- $ref := include "kiqstack.valkey.passwordSecret" . | fromJson }}
- name: KIQSTACK_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
- name: REDIS_URL
  value: {{ printf "redis://default:$(KIQSTACK_REDIS_PASSWORD)@%s/0" (include "kiqstack.valkey.host" .) | quote }}
{{- else if not .Values.valkey.enabled }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.externalRedis.existingSecret }}
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
      {{- else }}
      name: {{ include "kiqstack.secretName" . }}
      key: REDIS_URL
      {{- end }}
{{- end }}
{{- include "kiqstack.apiTokenEnv" . }}
{{- end }}
