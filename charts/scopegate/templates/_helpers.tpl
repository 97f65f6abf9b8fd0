{{/* Chart name, overridable. */}}
{{- define "scopegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name, prefixed to the chart name unless it already contains it. */}}
{{- define "scopegate.fullname" -}}
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

{{- define "scopegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "scopegate.labels" -}}
helm.sh/chart: {{ include "scopegate.chart" . }}
{{ include "scopegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scopegate
{{- end }}

{{/* Labels that select the pods (immutable once installed). */}}
{{- define "scopegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scopegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "scopegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scopegate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "scopegate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Service's in-cluster DNS name, as Istio's extension provider needs it. */}}
{{- define "scopegate.serviceFQDN" -}}
{{- printf "%s.%s.svc.%s" (include "scopegate.fullname" .) .Release.Namespace .Values.istio.clusterDomain }}
{{- end }}

{{/* The Istio extension provider entry (a meshConfig.extensionProviders item),
shared by NOTES.txt and the optional provider ConfigMap. */}}
{{- define "scopegate.istioProvider" -}}
- name: {{ .Values.istio.providerName }}
  envoyExtAuthzGrpc:
    service: {{ include "scopegate.serviceFQDN" . }}
    port: {{ .Values.service.grpcPort }}
    timeout: {{ .Values.istio.timeout }}
    failOpen: false
    statusOnError: "503"
{{- end }}

{{/* The Istio extension provider for MCP servers: the same service, with a
bounded request body in the Check for `mcp:` rules (docs/mcp.md). */}}
{{- define "scopegate.istioMcpProvider" -}}
- name: {{ .Values.istio.providerName }}-mcp
  envoyExtAuthzGrpc:
    service: {{ include "scopegate.serviceFQDN" . }}
    port: {{ .Values.service.grpcPort }}
    timeout: {{ .Values.istio.timeout }}
    failOpen: false
    statusOnError: "503"
    includeRequestBodyInCheck:
      maxRequestBytes: 65536
      allowPartialMessage: false
      packAsBytes: true
{{- end }}

{{/* The TokenPolicy access rules, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "scopegate.tokenPolicyRules" -}}
- apiGroups: ["scopegate.dev"]
  resources: ["tokenpolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["scopegate.dev"]
  resources: ["tokenpolicies/status"]
  verbs: ["patch"]
{{- end }}

{{/* Fails the render on value combinations the schema cannot express. */}}
{{- define "scopegate.validate" -}}
{{- $v := .Values }}
{{- if lt (int $v.terminationGracePeriodSeconds) (add $v.preStopSleepSeconds $v.shutdownGraceSeconds | int) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least preStopSleepSeconds + shutdownGraceSeconds (%v + %v), or in-flight Checks are cut off" $v.terminationGracePeriodSeconds $v.preStopSleepSeconds $v.shutdownGraceSeconds) }}
{{- end }}
{{- if and $v.envoyGateway.securityPolicy.enabled (not $v.envoyGateway.securityPolicy.targetRefs) }}
{{- fail "envoyGateway.securityPolicy.enabled needs envoyGateway.securityPolicy.targetRefs (the Gateway or HTTPRoute to protect)" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%v) must not exceed autoscaling.maxReplicas (%v)" $v.autoscaling.minReplicas $v.autoscaling.maxReplicas) }}
{{- end }}
{{- end }}
