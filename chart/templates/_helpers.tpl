{{/*
Chart name, truncated to 63 characters.
*/}}
{{- define "kiqstack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-kiqstack, or <release> when the release name already contains the chart name.
Component names append "-server" / "-worker", so keep room for them (55 + 7 = 62).
*/}}
{{- define "kiqstack.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kiqstack.serverName" -}}
{{- printf "%s-server" (include "kiqstack.fullname" .) }}
{{- end }}

{{- define "kiqstack.workerName" -}}
{{- printf "%s-worker" (include "kiqstack.fullname" .) }}
{{- end }}

{{/*
The scheduler's name; "-scheduler" is longer than "-server"/"-worker", so the fullname gives way.
*/}}
{{- define "kiqstack.schedulerName" -}}
{{- printf "%s-scheduler" (include "kiqstack.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{- define "kiqstack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The image tag without a digest, for the version label.
*/}}
{{- define "kiqstack.versionLabel" -}}
{{- regexReplaceAll "@.*$" (default .Chart.AppVersion .Values.image.tag) "" | trunc 63 | trimSuffix "-" | quote }}
{{- end }}

{{/*
Selector labels. Call with (dict "ctx" $ "component" "server").
They never change across upgrades (no version, no chart).
*/}}
{{- define "kiqstack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiqstack.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
Common labels. Call with (dict "ctx" $ "component" "server"); component may be empty.
*/}}
{{- define "kiqstack.labels" -}}
helm.sh/chart: {{ include "kiqstack.chart" .ctx }}
{{ include "kiqstack.selectorLabels" . }}
app.kubernetes.io/version: {{ include "kiqstack.versionLabel" .ctx }}
app.kubernetes.io/part-of: kiqstack
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kiqstack.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{- define "kiqstack.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kiqstack.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Full name of a dependency chart, computed exactly like the subchart's own fullname helper
(nats-io/k8s "nats.fullname", valkey-io/valkey-helm "valkey.fullname"): fullnameOverride wins,
else <release>-<name>, or <release> alone when the release name contains <name>.
Call with (dict "ctx" $ "chart" "nats" "values" .Values.nats).
*/}}
{{- define "kiqstack.dependencyFullname" -}}
{{- $values := .values | default dict }}
{{- if $values.fullnameOverride }}
{{- $values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .chart $values.nameOverride }}
{{- if contains $name .ctx.Release.Name }}
{{- .ctx.Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .ctx.Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kiqstack.nats.fullname" -}}
{{- include "kiqstack.dependencyFullname" (dict "ctx" . "chart" "nats" "values" .Values.nats) }}
{{- end }}

{{- define "kiqstack.valkey.fullname" -}}
{{- include "kiqstack.dependencyFullname" (dict "ctx" . "chart" "valkey" "values" .Values.valkey) }}
{{- end }}

{{/*
NATS monitoring endpoint for KEDA: the headless Service, so the scaler can reach the consumer
leader of a clustered JetStream by pod name. Call with (dict "ctx" $ "keda" <a pool's autoscaling.keda>).
*/}}
{{- define "kiqstack.nats.monitoringEndpoint" -}}
{{- $ctx := .ctx }}
{{- $ka := .keda | default dict }}
{{- if $ka.natsServerMonitoringEndpoint }}
{{- $ka.natsServerMonitoringEndpoint }}
{{- else if $ctx.Values.nats.enabled }}
{{- $port := 8222 }}
{{- with $ctx.Values.nats.config }}{{ with .monitor }}{{ with .port }}{{ $port = . }}{{ end }}{{ end }}{{ end }}
{{- printf "%s-headless.%s.svc.cluster.local:%v" (include "kiqstack.nats.fullname" $ctx) $ctx.Release.Namespace $port }}
{{- else }}
{{- $ctx.Values.externalNats.monitoringEndpoint }}
{{- end }}
{{- end }}

{{/*
Pod-level security context: top-level podSecurityContext with the component's on top.
Call with (dict "ctx" $ "component" .Values.server).
*/}}
{{- define "kiqstack.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy (.ctx.Values.podSecurityContext | default dict)) (deepCopy (.component.podSecurityContext | default dict))) }}
{{- end }}

{{- define "kiqstack.securityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy (.ctx.Values.securityContext | default dict)) (deepCopy (.component.securityContext | default dict))) }}
{{- end }}

{{/*
Topology spread constraints with the component's selector filled in where missing.
Call with (dict "ctx" $ "component" "server" "constraints" .Values.server.topologySpreadConstraints).
*/}}
{{- define "kiqstack.topologySpreadConstraints" -}}
{{- $out := list }}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not $c.labelSelector }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "kiqstack.selectorLabels" (dict "ctx" $.ctx "component" $.component) | fromYaml)) }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Fail unless the cluster serves an API (CRD), unless skipApiChecks is set.
Call with (dict "ctx" $ "api" "keda.sh/v1alpha1/ScaledObject" "feature" "worker.autoscaling.mode=keda" "hint" "...").
*/}}
{{- define "kiqstack.requireApi" -}}
{{- if not (or .ctx.Values.skipApiChecks (.ctx.Capabilities.APIVersions.Has .api)) }}
{{- fail (printf "%s needs the %s API, which this cluster does not serve. %s Or set skipApiChecks=true (e.g. for `helm template` without --api-versions %s)." .feature .api .hint .api) }}
{{- end }}
{{- end }}

{{/*
Pod-template annotations shared by every component. checksum/secret: see "kiqstack.secretChecksum".
Call with (dict "ctx" $ "annotations" .Values.server.podAnnotations).
*/}}
{{- define "kiqstack.podAnnotations" -}}
checksum/config: {{ include (print .ctx.Template.BasePath "/configmap.yaml") .ctx | sha256sum }}
{{- if include "kiqstack.createSecret" .ctx }}
checksum/secret: {{ include "kiqstack.secretChecksum" .ctx }}
{{- end }}
{{- if .ctx.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .ctx.Values.config.metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .annotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The parts of a kiqstack pod spec that the server, the workers and the scheduler share.
Call with (dict "ctx" $ "component" "server" "values" .Values.server).
*/}}
{{- define "kiqstack.podCommon" -}}
{{- $ctx := .ctx -}}
serviceAccountName: {{ include "kiqstack.serviceAccountName" $ctx }}
automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automount }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "kiqstack.podSecurityContext" (dict "ctx" $ctx "component" .values) | nindent 2 }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- include "kiqstack.topologySpreadConstraints" (dict "ctx" $ctx "component" $.component "constraints" .) | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: {{ $ctx.Values.tmpSizeLimit }}
  {{- with .values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Container fields shared by the server, the workers and the scheduler: image, env, security context,
/tmp. Call with (dict "ctx" $ "runMode" "server" "values" .Values.server), optionally "env": more
rendered EnvVar entries (a worker pool's WORKER_*), placed before the component's extraEnv.
*/}}
{{- define "kiqstack.containerCommon" -}}
{{- $ctx := .ctx -}}
image: {{ include "kiqstack.image" $ctx | quote }}
imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
envFrom:
  - configMapRef:
      name: {{ include "kiqstack.fullname" $ctx }}
env:
  - name: RUN_MODE
    value: {{ .runMode | quote }}
  {{- with (include "kiqstack.secretEnv" $ctx | trim) }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with .env }}
  {{- . | trim | nindent 2 }}
  {{- end }}
  {{- with .values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
securityContext:
  {{- include "kiqstack.securityContext" (dict "ctx" $ctx "component" .values) | nindent 2 }}
{{- with .values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.startupProbe }}
startupProbe:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.livenessProbe }}
livenessProbe:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.readinessProbe }}
readinessProbe:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- with .values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Labels of a worker pool's objects and pods: the component's labels and kiqstack.io/pool (not part of
the selector, which stays name + instance + component). Call with (dict "ctx" $ "pool" $pool).
*/}}
{{- define "kiqstack.pool.labels" -}}
{{ include "kiqstack.labels" (dict "ctx" .ctx "component" .pool.component) }}
kiqstack.io/pool: {{ .pool.name }}
{{- end }}

{{/*
The environment of a worker pool's container on top of the ConfigMap: the queues it serves and its
own WORKER_* settings (the pool's values, else config.worker.*). Call with (dict "ctx" $ "pool" $pool).
*/}}
{{- define "kiqstack.pool.env" -}}
{{- $s := .pool.settings }}
- name: WORKER_QUEUES
  value: {{ join "," .pool.queues | quote }}
- name: WORKER_CONCURRENCY
  value: {{ include "kiqstack.number" $s.concurrency | quote }}
- name: WORKER_PROCESSES
  value: {{ include "kiqstack.number" $s.processes | quote }}
- name: WORKER_FETCH_BATCH
  value: {{ include "kiqstack.number" $s.fetchBatch | quote }}
- name: WORKER_SHUTDOWN_TIMEOUT
  value: {{ include "kiqstack.number" $s.shutdownTimeout | quote }}
{{- end }}

{{/*
A PodMonitor for the pods of one component (a worker pool, the scheduler), on `http-metrics`; the
targets carry the pod label kiqstack.io/pool (as kiqstack_io_pool) when the pods have it.
Call with (dict "ctx" $ "name" <name> "component" <component> "labels" <extra labels>).
*/}}
{{- define "kiqstack.podMonitor" -}}
{{- $ctx := .ctx }}
{{- include "kiqstack.requireApi" (dict "ctx" $ctx "api" "monitoring.coreos.com/v1/PodMonitor" "feature" "metrics.podMonitor.enabled" "hint" "Install the Prometheus Operator CRDs first.") }}
{{- $m := $ctx.Values.metrics.podMonitor }}
apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata:
  name: {{ .name }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "kiqstack.labels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
    {{- with .labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $m.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "kiqstack.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 6 }}
  namespaceSelector:
    matchNames:
      - {{ $ctx.Release.Namespace }}
  podTargetLabels:
    - kiqstack.io/pool
  podMetricsEndpoints:
    - port: http-metrics
      path: /metrics
      interval: {{ $m.interval }}
      {{- with $m.scrapeTimeout }}
      scrapeTimeout: {{ . }}
      {{- end }}
      {{- with $m.relabelings }}
      relabelings:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $m.metricRelabelings }}
      metricRelabelings:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/*
A PodDisruptionBudget for the pods of one component. Call with (dict "ctx" $ "name" <name>
"component" <component> "maxUnavailable" <n or %>), optionally "labels" (more labels).
*/}}
{{- define "kiqstack.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "kiqstack.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
    {{- with .labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  maxUnavailable: {{ .maxUnavailable }}
  selector:
    matchLabels:
      {{- include "kiqstack.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
{{- end }}
