variable "bucket" {
  type        = string
  description = "Bucket that holds the lake (s3://BUCKET/PREFIX)"
}

variable "prefix" {
  type        = string
  default     = "kprobe"
  description = "Key prefix of the lake inside the bucket (no leading or trailing slash)"
  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.prefix))
    error_message = "prefix: path segments of letters, digits, '.', '_' or '-', no slashes at either end."
  }
}

variable "noncurrent_version_days" {
  type        = number
  default     = 7
  description = "Days an overwritten or deleted object version is kept (undo window; versioning is on)"
}

variable "access_log_bucket" {
  type        = string
  default     = ""
  description = "Bucket that receives S3 server access logs of the lake bucket (empty: none)"
}

# Who may assume the roles. Either IRSA (EKS service accounts through the cluster's OIDC
# provider) or plain AWS principals (node instance roles, a CI role), or both.
variable "oidc_provider_arn" {
  type        = string
  default     = ""
  description = "IRSA: ARN of the EKS cluster's IAM OIDC provider (empty: no IRSA trust)"
}

variable "oidc_issuer" {
  type        = string
  default     = ""
  description = "IRSA: the OIDC issuer without https:// (oidc.eks.REGION.amazonaws.com/id/ID)"
}

variable "namespace" {
  type        = string
  default     = "kprobe"
  description = "IRSA: Kubernetes namespace of the Helm release"
}

variable "helm_release" {
  type        = string
  default     = "kprobe"
  description = "IRSA: Helm release name; service accounts are RELEASE-agent, -compactor, -analyzer, -api, -replay"
}

variable "trusted_principal_arns" {
  type        = map(list(string))
  default     = {}
  description = "Plain trust: role name (agent, compactor, analyzer, reader) -> AWS principal ARNs allowed to assume it"
}

variable "agent_node_scoped" {
  type        = bool
  default     = false
  description = <<-EOT
    true: an agent may write data files only under node=<its kprobe-node session tag>
    (assume the agent role with `--tags Key=kprobe-node,Value=$NODE`; plain trust only).
    false: any node's partitions (IRSA carries no node name).
  EOT
}

variable "api_analyzes_on_demand" {
  type        = bool
  default     = true
  description = <<-EOT
    true: the API (reader role) may also write graphs/ and causal_edges, as the analyzer does,
    to analyse on demand a window nobody analysed yet (the chart's api.analyzeOnDemand).
    false: the API writes only replay jobs; run it with --no-analyze (api.analyzeOnDemand=false).
  EOT
}
