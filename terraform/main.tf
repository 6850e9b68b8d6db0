# The lake bucket and the two IAM roles that touch it: agents append, readers read.
# Delta commits on S3 rely on conditional writes (If-None-Match), which S3 supports natively.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = { source = "hashicorp/aws", version = "~> 5.0" }
  }
}

variable "bucket" {
  type        = string
  description = "Bucket that holds the lake (s3://BUCKET/PREFIX)"
}

variable "prefix" {
  type    = string
  default = "kprobe"
}

variable "retention_days" {
  type        = number
  default     = 30
  description = "Safety net behind `kprobe lake retain`: objects older than this expire"
}

resource "aws_s3_bucket" "lake" {
  bucket = var.bucket
}

resource "aws_s3_bucket_public_access_block" "lake" {
  bucket                  = aws_s3_bucket.lake.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    apply_server_side_encryption_by_default { sse_algorithm = "AES256" }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    id     = "expire-old-partitions"
    status = "Enabled"
    filter { prefix = "${var.prefix}/v1/" }
    expiration { days = var.retention_days }
  }
}

data "aws_iam_policy_document" "agent" {
  statement {
    sid       = "AppendToLake"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn, "${aws_s3_bucket.lake.arn}/${var.prefix}/*"]
  }
}

data "aws_iam_policy_document" "reader" {
  statement {
    sid       = "ReadLake"
    actions   = ["s3:GetObject", "s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn, "${aws_s3_bucket.lake.arn}/${var.prefix}/*"]
  }
  statement {
    # The query API stores replay job state and compute writes graph snapshots/edges.
    sid       = "WriteJobsAndGraphs"
    actions   = ["s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.lake.arn}/${var.prefix}/*"]
  }
}

resource "aws_iam_policy" "agent" {
  name   = "kprobe-agent-${var.bucket}"
  policy = data.aws_iam_policy_document.agent.json
}

resource "aws_iam_policy" "reader" {
  name   = "kprobe-reader-${var.bucket}"
  policy = data.aws_iam_policy_document.reader.json
}

output "lake_uri" {
  value = "s3://${aws_s3_bucket.lake.bucket}/${var.prefix}"
}

output "agent_policy_arn" {
  value = aws_iam_policy.agent.arn
}

output "reader_policy_arn" {
  value = aws_iam_policy.reader.arn
}
