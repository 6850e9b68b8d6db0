{{- /* Names and labels. Every name and selector carries the release, so two releases in one
namespace never select each other's pods. */ -}}
{{- define "kprobe.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "kprobe.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- /* selector labels of one component: include "kprobe.selector" (list $ "agent") */ -}}
{{- define "kprobe.selector" -}}
app.kubernetes.io/name: {{ (index . 0).Chart.Name }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kprobe.lakeEnv" -}}
- name: KPROBE_LAKE
  value: {{ .Values.lake.uri | quote }}
- name: KPROBE_S3_REGION
  value: {{ .Values.lake.region | quote }}
- name: AWS_REGION
  value: {{ .Values.lake.region | quote }}
{{- end -}}

{{- define "kprobe.lakeEnvFrom" -}}
{{- if .Values.lake.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.lake.credentialsSecret }}
{{- end }}
{{- end -}}

{{- /* a container that needs nothing: no privilege, read-only root, non-root user */ -}}
{{- define "kprobe.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kprobe.restrictedPod" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}
