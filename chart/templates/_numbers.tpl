{{/*
A number as the string an environment variable needs, at any size. Helm 3.17+ and Helm 4 keep the
numbers of values files as float64 and print whole numbers of 1,000,000 and more in exponent form
("1.2096e+06"), which no integer setting accepts: whole numbers print as integers ("1209600"),
others unchanged ("2.5"); strings and integers (from --set) pass through.
*/}}
{{- define "kiqstack.number" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}
