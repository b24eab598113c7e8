{{/*
The chart name, or nameOverride.
*/}}
{{- define "capture-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, or the release name
followed by the chart name (just the release name when it already contains
the chart name). Kept to 63 characters, the limit of a label value.
*/}}
{{- define "capture-operator.fullname" -}}
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

{{/*
chart label: name-version, `+` replaced (not allowed in labels).
*/}}
{{- define "capture-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator pods. They go into the Deployment's
selector, which cannot change after install: keep them stable.
*/}}
{{- define "capture-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capture-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of every object of the chart.
*/}}
{{- define "capture-operator.labels" -}}
helm.sh/chart: {{ include "capture-operator.chart" . }}
{{ include "capture-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "capture-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "capture-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image.
*/}}
{{- define "capture-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The namespaces the operator manages, comma-separated, in the order given:
watchNamespaces, plus the older single watchNamespace, or else the release
namespace. Empty when clusterWide: the operator then manages every
namespace.
*/}}
{{- define "capture-operator.watchNamespaces" -}}
{{- if not .Values.clusterWide }}
{{- $namespaces := concat .Values.watchNamespaces (compact (list .Values.watchNamespace)) | uniq }}
{{- if not $namespaces }}
{{- $namespaces = list .Release.Namespace }}
{{- end }}
{{- join "," $namespaces }}
{{- end }}
{{- end }}

{{/*
Settings the schema cannot express; fails the render with the reason.
*/}}
{{- define "capture-operator.validate" -}}
{{- if and .Values.clusterWide (or .Values.watchNamespaces .Values.watchNamespace) }}
{{- fail "clusterWide is true but watchNamespaces (or watchNamespace) is set: a cluster-wide operator manages every namespace. Set one or the other." }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: more than one operator replica needs leader election, or they would all reconcile at once. Set leaderElection.enabled=true or replicaCount=1." (int .Values.replicaCount)) }}
{{- end }}
{{- end }}
