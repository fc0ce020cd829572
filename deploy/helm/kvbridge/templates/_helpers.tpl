{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "kvbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped base name of every object. */}}
{{- define "kvbridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* <fullname>-<component>, e.g. kvbridge-provider. Call with (list $ "provider"). */}}
{{- define "kvbridge.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "kvbridge.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) }}
{{- end }}

{{/* Labels of every object. Call with (list $ "component"). */}}
{{- define "kvbridge.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kvbridge
{{ include "kvbridge.selectorLabels" . }}
{{- end }}

{{/* Selector labels of a component's pods. Call with (list $ "component"). */}}
{{- define "kvbridge.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "kvbridge.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* The image reference: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "kvbridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The KVBRIDGE_LOG filter of a component: its own logLevel, else global.logLevel, else the Azure
chart's logVerbosity (0-3 info, 4-5 debug, 6+ trace). Call with (list $ .Values.<component>).
*/}}
{{- define "kvbridge.logLevel" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- if $component.logLevel }}
{{- $component.logLevel }}
{{- else if $root.Values.global.logLevel }}
{{- $root.Values.global.logLevel }}
{{- else if ge (int $root.Values.logVerbosity) 6 }}
{{- "trace" }}
{{- else if ge (int $root.Values.logVerbosity) 4 }}
{{- "debug" }}
{{- else }}
{{- "info" }}
{{- end }}
{{- end }}

{{/*
Environment of a component's container: KVBRIDGE_LOG, global.env, then the component's env
(which wins), sorted by name. Call with (list $ .Values.<component>).
*/}}
{{- define "kvbridge.env" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $env := merge (dict) ($component.env | default dict) ($root.Values.global.env | default dict) -}}
- name: KVBRIDGE_LOG
  value: {{ include "kvbridge.logLevel" . | quote }}
{{- range $name := keys $env | sortAlpha }}
- name: {{ $name }}
  value: {{ get $env $name | toString | quote }}
{{- end }}
{{- end }}

{{/* envFrom of a component's container from global.envFromSecret and its own envFromSecret. */}}
{{- define "kvbridge.envFrom" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- range concat ($root.Values.global.envFromSecret | default list) ($component.envFromSecret | default list) }}
- secretRef:
    name: {{ .name }}
{{- end }}
{{- end }}

{{/* The hardened container securityContext shared by the Deployments (non-root). */}}
{{- define "kvbridge.restrictedSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
