{{/*
NetworkPolicy building blocks. The policies only restrict ingress; several policies selecting the
same pods add up, so users can admit more sources with policies of their own.
*/}}

{{/*
One ingress rule. Call with (dict "ports" (list 4222) "from" <peers>); "from" empty or missing
admits every source.
*/}}
{{- define "kiqstack.np.rule" -}}
- ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .from }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
The peer "every pod of this release": kiqstack's pods, the subcharts' pods and the helm test pods
all carry app.kubernetes.io/instance=<release>.
*/}}
{{- define "kiqstack.np.releasePeer" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
A NetworkPolicy object. Call with (dict "ctx" $ "name" <name> "component" <component>
"podSelector" <LabelSelector> "rules" <rendered rule list>), optionally "labels" (more labels).
*/}}
{{- define "kiqstack.np.policy" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "kiqstack.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
    {{- with .labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  podSelector:
    {{- toYaml .podSelector | nindent 4 }}
  policyTypes:
    - Ingress
  ingress:
    {{- .rules | nindent 4 }}
{{- end }}

{{/*
The metrics rule: networkPolicy.metricsFrom (every source when empty).
Call with (dict "ctx" $ "ports" (list ...)).
*/}}
{{- define "kiqstack.np.metricsRule" -}}
{{- include "kiqstack.np.rule" (dict "ports" .ports "from" .ctx.Values.networkPolicy.metricsFrom) }}
{{- end }}
