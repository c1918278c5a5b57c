{{/*
Worker pools. `workers.<name>` is deep-merged over `worker` (the defaults of every pool): keys the
pool sets win, including false and 0; null removes a key; maps merge key by key; lists and scalars
replace.
Sprig's merge/mergeOverwrite cannot do this (they skip "empty" values, so a pool could not set
minReplicas 0 or enabled false over the defaults).

Pool "default" keeps the names of the single worker before pools (Deployment, HPA, ScaledObject,
PDB, NetworkPolicy, PodMonitor `<fullname>-worker`, component `worker`): a Deployment's selector is
immutable, so `helm upgrade` from that chart must find the same one. Pool "p" is
`<fullname>-worker-p`, component `worker-p`: disjoint selectors.
*/}}

{{/*
Merge the map .src into the map .dst, in place (dst must be a copy the caller owns). A null in src
removes the key, as a null does in Helm's own values ("unset what the defaults set").
*/}}
{{- define "kiqstack.mergeInto" -}}
{{- $dst := .dst }}
{{- range $key, $value := .src }}
{{- if kindIs "invalid" $value }}
{{- $_ := unset $dst $key }}
{{- else if and (kindIs "map" $value) (hasKey $dst $key) (kindIs "map" (index $dst $key)) }}
{{- include "kiqstack.mergeInto" (dict "dst" (index $dst $key) "src" $value) }}
{{- else if or (kindIs "map" $value) (kindIs "slice" $value) }}
{{- $_ := set $dst $key (deepCopy $value) }}
{{- else }}
{{- $_ := set $dst $key $value }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Every pool, computed once per render and kept on the root context as "kiqstackPools": a list,
sorted by name, of the merged values of each pool plus
  name       the pool name
  objectName Deployment/HPA/ScaledObject/PDB/NetworkPolicy/PodMonitor name
  component  app.kubernetes.io/component of its objects (selector)
  queues     the queues it serves (its `queues`, else [name])
  settings   WORKER_* of its pods: concurrency, processes, fetchBatch, shutdownTimeout
  minReplicas the replicas it always keeps (for the PDB and NOTES)
Pools set to null (a user's `workers.<name>: null`) are left out. Validation ("kiqstack.pools.validate")
runs here, so whichever template asks first, a bad pool fails the render.
Call with the root context; prints nothing.
*/}}
{{- define "kiqstack.pools.init" -}}
{{- if not (hasKey . "kiqstackPools") }}
{{- $pools := list }}
{{- $fullname := include "kiqstack.fullname" . }}
{{- $cw := .Values.config.worker }}
{{- range $name, $raw := (.Values.workers | default dict) }}
{{- if not (kindIs "invalid" $raw) }}
{{- if not (kindIs "map" $raw) }}
{{- fail (printf "workers.%s must be a map of pool values (or null to remove the pool), not %s" $name (kindOf $raw)) }}
{{- end }}
{{- $pool := deepCopy ($.Values.worker | default dict) }}
{{- include "kiqstack.mergeInto" (dict "dst" $pool "src" $raw) }}
{{- $_ := set $pool "name" $name }}
{{- $_ := set $pool "objectName" (ternary (printf "%s-worker" $fullname) (printf "%s-worker-%s" $fullname $name) (eq $name "default")) }}
{{- $_ := set $pool "component" (ternary "worker" (printf "worker-%s" $name) (eq $name "default")) }}
{{- $queues := $raw.queues }}
{{- if kindIs "invalid" $queues }}{{ $queues = list $name }}{{ end }}
{{- $_ := set $pool "queues" $queues }}
{{- $settings := dict }}
{{- range $key := list "concurrency" "processes" "fetchBatch" "shutdownTimeout" }}
{{- $value := index $raw $key }}
{{- if kindIs "invalid" $value }}{{ $value = index $cw $key }}{{ end }}
{{- $_ := set $settings $key $value }}
{{- end }}
{{- $_ := set $pool "settings" $settings }}
{{- $_ := set $pool "minReplicas" (ternary $pool.replicas (dig "autoscaling" "minReplicas" 0 $pool) (eq (toString (dig "autoscaling" "mode" "" $pool)) "none")) }}
{{- $pools = append $pools $pool }}
{{- end }}
{{- end }}
{{- $_ := set . "kiqstackPools" $pools }}
{{- include "kiqstack.pools.validate" . }}
{{- end }}
{{- end }}

{{/*
The enabled pools (list). Call with the root context.
*/}}
{{- define "kiqstack.pools.enabled" -}}
{{- include "kiqstack.pools.init" . }}
{{- $out := list }}
{{- range .kiqstackPools }}{{ if .enabled }}{{ $out = append $out . }}{{ end }}{{ end }}
{{- toJson $out }}
{{- end }}

{{/*
"true" when an enabled pool serves the queue: (dict "ctx" $ "queue" "default").
*/}}
{{- define "kiqstack.pools.serves" -}}
{{- include "kiqstack.pools.init" .ctx }}
{{- range .ctx.kiqstackPools }}{{ if and .enabled (has $.queue .queues) }}true{{ end }}{{ end }}
{{- end }}

{{/*
"true" when an enabled pool uses KEDA (the NATS monitor port must admit KEDA then).
*/}}
{{- define "kiqstack.pools.anyKeda" -}}
{{- include "kiqstack.pools.init" . }}
{{- range .kiqstackPools }}{{ if and .enabled (eq .autoscaling.mode "keda") }}true{{ end }}{{ end }}
{{- end }}

{{/*
The JetStream names of a queue (docs/contract.md "Queues"): the `default` queue keeps NATS_SUBJECT
and NATS_CONSUMER, queue q uses `<NATS_SUBJECT>.q` and `<NATS_CONSUMER>_q`.
Call with (dict "ctx" $ "queue" "cpu").
*/}}
{{- define "kiqstack.queue.consumer" -}}
{{- $base := .ctx.Values.config.nats.consumer }}
{{- if eq .queue "default" }}{{ $base }}{{ else }}{{ printf "%s_%s" $base .queue }}{{ end }}
{{- end }}

{{- define "kiqstack.queue.subject" -}}
{{- $base := .ctx.Values.config.nats.subject }}
{{- if eq .queue "default" }}{{ $base }}{{ else }}{{ printf "%s.%s" $base .queue }}{{ end }}
{{- end }}

{{/*
Queues some pool lists but no pool can run: every pool that lists them is off, or runs a fixed 0
replicas. Tasks sent there wait until a pool serves them (NOTES.txt warns). JSON list, sorted.
*/}}
{{- define "kiqstack.pools.unservedQueues" -}}
{{- include "kiqstack.pools.init" . }}
{{- $listed := dict }}
{{- $running := dict }}
{{- range .kiqstackPools }}
{{- $runs := and .enabled (or (ne .autoscaling.mode "none") (gt (int .replicas) 0)) }}
{{- range .queues }}
{{- $_ := set $listed . true }}
{{- if $runs }}{{ $_ := set $running . true }}{{ end }}
{{- end }}
{{- end }}
{{- $out := list }}
{{- range $queue, $_ := $listed }}{{ if not (hasKey $running $queue) }}{{ $out = append $out $queue }}{{ end }}{{ end }}
{{- toJson $out }}
{{- end }}

{{/*
Queues served by more than one enabled pool, as a JSON map queue -> [pool names].
*/}}
{{- define "kiqstack.pools.sharedQueues" -}}
{{- include "kiqstack.pools.init" . }}
{{- $by := dict }}
{{- range .kiqstackPools }}
{{- if .enabled }}
{{- $pool := .name }}
{{- range .queues }}{{ $_ := set $by . (append (get $by . | default list) $pool) }}{{ end }}
{{- end }}
{{- end }}
{{- $out := dict }}
{{- range $queue, $pools := $by }}{{ if gt (len $pools) 1 }}{{ $_ := set $out $queue $pools }}{{ end }}{{ end }}
{{- toJson $out }}
{{- end }}

{{/*
The rules of every pool that values.schema.json cannot express (or that `--skip-schema-validation`
would let through). Messages name the pool as `workers.<name>`: its values are `worker` with the
pool's own keys on top, so a key may come from either.
*/}}
{{- define "kiqstack.pools.validate" -}}
{{- $v := .Values }}
{{- $namePattern := "^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$" }}
{{- $queuePattern := "^[a-z0-9][a-z0-9_-]{0,31}$" }}
{{- range .kiqstackPools }}
{{- $p := printf "workers.%s" .name }}
{{- if not (regexMatch $namePattern .name) }}
{{- fail (printf "%s: a pool name is 1 to 32 lowercase letters, digits or '-', starting and ending with a letter or digit (it becomes part of Kubernetes object names and labels)" $p) }}
{{- end }}
{{- if gt (len .objectName) 63 }}
{{- fail (printf "%s: its objects would be named %s (%d characters, more than 63): use a shorter pool name, or fullnameOverride" $p .objectName (len .objectName)) }}
{{- end }}
{{- if not (kindIs "slice" .queues) }}
{{- fail (printf "%s.queues must be a list of queue names" $p) }}
{{- end }}
{{- if not .queues }}
{{- fail (printf "%s.queues is empty: a pool serves at least one queue (leave queues out to serve the queue named like the pool)" $p) }}
{{- end }}
{{- range .queues }}
{{- if not (and (kindIs "string" .) (regexMatch $queuePattern .)) }}
{{- fail (printf "%s.queues: %v is not a queue name ([a-z0-9][a-z0-9_-]{0,31}, like the queue of @register_task(queue=...))" $p .) }}
{{- end }}
{{- end }}
{{- if ne (len .queues) (len (uniq .queues)) }}
{{- fail (printf "%s.queues lists a queue twice: %s" $p (join ", " .queues)) }}
{{- end }}
{{- if .enabled }}
{{- $as := .autoscaling | default dict }}
{{- if not (has (toString $as.mode) (list "hpa" "keda" "none")) }}
{{- fail (printf "%s.autoscaling.mode must be hpa, keda or none, not %v" $p $as.mode) }}
{{- end }}
{{- if ne $as.mode "none" }}
{{- if gt (int $as.minReplicas) (int $as.maxReplicas) }}
{{- fail (printf "%s: autoscaling.minReplicas (%v) must not exceed maxReplicas (%v)" $p $as.minReplicas $as.maxReplicas) }}
{{- end }}
{{- $cpu := not (kindIs "invalid" $as.targetCPUUtilizationPercentage) }}
{{- $mem := not (kindIs "invalid" $as.targetMemoryUtilizationPercentage) }}
{{- if and $cpu (not (dig "requests" "cpu" "" (.resources | default dict))) }}
{{- fail (printf "%s: autoscaling.targetCPUUtilizationPercentage needs resources.requests.cpu (worker.resources or the pool's; utilization is relative to the request)" $p) }}
{{- end }}
{{- if and $mem (not (dig "requests" "memory" "" (.resources | default dict))) }}
{{- fail (printf "%s: autoscaling.targetMemoryUtilizationPercentage needs resources.requests.memory (worker.resources or the pool's; utilization is relative to the request)" $p) }}
{{- end }}
{{- if eq $as.mode "hpa" }}
{{- if lt (int $as.minReplicas) 1 }}
{{- fail (printf "%s: autoscaling.minReplicas must be at least 1 with mode=hpa (scale to zero needs mode=keda)" $p) }}
{{- end }}
{{- if not (or $cpu $mem) }}
{{- fail (printf "%s: autoscaling.mode=hpa needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" $p) }}
{{- end }}
{{- end }}
{{- if eq $as.mode "keda" }}
{{- if not (include "kiqstack.nats.monitoringEndpoint" (dict "ctx" $ "keda" $as.keda)) }}
{{- fail (printf "%s: autoscaling.mode=keda with nats.enabled=false needs externalNats.monitoringEndpoint or autoscaling.keda.natsServerMonitoringEndpoint (host:8222)" $p) }}
{{- end }}
{{- if and $v.nats.enabled (not (dig "config" "monitor" "enabled" true $v.nats)) }}
{{- fail (printf "%s: autoscaling.mode=keda reads the NATS monitoring port: keep nats.config.monitor.enabled=true" $p) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- /* The default queue: tasks that name no queue, the built-in tasks, the helm test */}}
{{- $enabled := include "kiqstack.pools.enabled" . | fromJsonArray }}
{{- if and $v.server.enabled $enabled (not (include "kiqstack.pools.serves" (dict "ctx" . "queue" "default"))) }}
{{- fail (printf "no enabled worker pool serves the queue \"default\" (pools: %s): tasks that name no queue, and the built-in kiqstack.ping of the helm test, would wait forever. Add default to a pool's queues (workers.<name>.queues) or keep workers.default" (include "kiqstack.pools.describe" .)) }}
{{- end }}
{{- end }}

{{/*
"name [queue, ...]" of every enabled pool, for messages.
*/}}
{{- define "kiqstack.pools.describe" -}}
{{- $out := list }}
{{- range .kiqstackPools }}{{ if .enabled }}{{ $out = append $out (printf "%s [%s]" .name (join ", " .queues)) }}{{ end }}{{ end }}
{{- join "; " $out }}
{{- end }}
