# The lake bucket, its KMS key, and one IAM role per kind of workload that touches it:
#   agent     appends its node's partitions, commits, and deletes old commit-log files
#   compactor rewrites and vacuums tables (kprobe lake compact / retain)
#   analyzer  publishes graph snapshots (graphs/) and replaces causal_edges rows
#   reader    the query API: reads everything, writes replay jobs under jobs/ only
# Delta commits on S3 rely on conditional writes (If-None-Match), which S3 supports natively.
# Checked by tests/infra/test_terraform.py (python-hcl2 for the rules below, checkov).

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = { source = "hashicorp/aws", version = "~> 5.0" }
  }
}
