{{/*
Cross-field rules that values.schema.json cannot express. Included by configmap.yaml, which
always renders, so every install, upgrade and template run goes through them.
*/}}
{{- define "kiqstack.validate" -}}
{{- $v := .Values }}
{{- /* NATS */}}
{{- if and $v.externalNats.url $v.externalNats.existingSecret }}
{{- fail "externalNats: set either externalNats.url or externalNats.existingSecret, not both" }}
{{- end }}
{{- if $v.nats.enabled }}
{{- if or $v.externalNats.url $v.externalNats.existingSecret }}
{{- fail "externalNats.url/existingSecret is set but nats.enabled=true: set nats.enabled=false to use an external NATS" }}
{{- end }}
{{- if not (dig "config" "jetstream" "enabled" false $v.nats) }}
{{- fail "nats.config.jetstream.enabled must be true: kiqstack keeps its task queue in JetStream" }}
{{- end }}
{{- else if not (or $v.externalNats.url $v.externalNats.existingSecret) }}
{{- fail "nats.enabled=false needs externalNats.url or externalNats.existingSecret (the NATS_URL of a JetStream-enabled NATS)" }}
{{- end }}
{{- /* Redis */}}
{{- if and $v.externalRedis.url $v.externalRedis.existingSecret }}
{{- fail "externalRedis: set either externalRedis.url or externalRedis.existingSecret, not both" }}
{{- end }}
{{- if $v.valkey.enabled }}
{{- if or $v.externalRedis.url $v.externalRedis.existingSecret }}
{{- fail "externalRedis.url/existingSecret is set but valkey.enabled=true: set valkey.enabled=false to use an external Redis" }}
{{- end }}
{{- else if not (or $v.externalRedis.url $v.externalRedis.existingSecret) }}
{{- fail "valkey.enabled=false needs externalRedis.url or externalRedis.existingSecret (the REDIS_URL of a Redis/Valkey)" }}
{{- end }}
{{- /* API token */}}
{{- if and $v.apiToken $v.existingSecret }}
{{- fail "set either apiToken or existingSecret (for API_TOKEN), not both" }}
{{- end }}
{{- /* An API published by an Ingress needs a token, or an explicit opt-out */}}
{{- if and $v.server.enabled $v.server.ingress.enabled (not (include "kiqstack.hasApiToken" .)) (not $v.server.ingress.allowUnauthenticated) }}
{{- fail "server.ingress.enabled=true publishes the API, but no API token is set (apiToken or existingSecret): anyone who reaches the Ingress could run tasks. Set apiToken or existingSecret, or set server.ingress.allowUnauthenticated=true if something in front of the Ingress authenticates the clients" }}
{{- end }}
{{- /* NetworkPolicy fences for NATS/Redis outside the chart */}}
{{- if and $v.nats.enabled (dig "externalNats" "podSelector" dict $v.networkPolicy) }}
{{- fail "networkPolicy.externalNats.podSelector is for a NATS run outside this chart: set nats.enabled=false (the subchart's pods get their policy anyway)" }}
{{- end }}
{{- if and $v.valkey.enabled (dig "externalRedis" "podSelector" dict $v.networkPolicy) }}
{{- fail "networkPolicy.externalRedis.podSelector is for a Redis run outside this chart: set valkey.enabled=false (the subchart's pods get their policy anyway)" }}
{{- end }}
{{- /* Components (the worker pools validate themselves: _pools.tpl) */}}
{{- $pools := include "kiqstack.pools.enabled" . | fromJsonArray }}
{{- if not (or $v.server.enabled $pools) }}
{{- fail "the server and every worker pool are disabled (server.enabled, worker.enabled / workers.<name>.enabled): nothing to deploy" }}
{{- end }}
{{- if le (int $v.server.terminationGracePeriodSeconds) (int $v.config.shutdownDelaySeconds) }}
{{- fail (printf "server.terminationGracePeriodSeconds (%v) must be greater than config.shutdownDelaySeconds (%v)" $v.server.terminationGracePeriodSeconds $v.config.shutdownDelaySeconds) }}
{{- end }}
{{- end }}
