resource "aws_s3_bucket" "lake" {
  bucket = var.bucket
  # checkov:skip=CKV_AWS_144: cross-region replication is a deployment's choice (a second region, a second bill); the lake is a flight recorder with a bounded retention
  # checkov:skip=CKV2_AWS_62: nothing consumes bucket event notifications; readers poll the Delta log
  # checkov:skip=CKV_AWS_18: access logging is enabled by aws_s3_bucket_logging when var.access_log_bucket is set (a log bucket is the organisation's)
}

resource "aws_s3_bucket_ownership_controls" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule { object_ownership = "BucketOwnerEnforced" }
}

resource "aws_s3_bucket_public_access_block" "lake" {
  bucket                  = aws_s3_bucket.lake.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Versioning: an overwritten or deleted object (a vacuumed file, a cleaned log) stays
# recoverable for var.noncurrent_version_days.
resource "aws_s3_bucket_versioning" "lake" {
  bucket = aws_s3_bucket.lake.id
  versioning_configuration { status = "Enabled" }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.lake.arn
    }
    bucket_key_enabled = true # one KMS call per bucket key, not per object
  }
}

resource "aws_s3_bucket_logging" "lake" {
  count         = var.access_log_bucket == "" ? 0 : 1
  bucket        = aws_s3_bucket.lake.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3-access/${var.bucket}/"
}

# No rule ever expires a current object: a Delta table's _delta_log must stay whole however
# long the table is idle (an expired log corrupts the table), and data files are removed by
# `kprobe lake retain` / `compact` (vacuum) through the log. What expires here is only what
# no reader can reach: noncurrent versions, expired delete markers, unfinished uploads.
resource "aws_s3_bucket_lifecycle_configuration" "lake" {
  bucket     = aws_s3_bucket.lake.id
  depends_on = [aws_s3_bucket_versioning.lake]

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload { days_after_initiation = 1 }
  }

  rule {
    id     = "noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration { noncurrent_days = var.noncurrent_version_days }
    expiration { expired_object_delete_marker = true }
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "TLSOnly"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.lake.arn, "${aws_s3_bucket.lake.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
  statement {
    sid       = "TLS12OrNewer"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.lake.arn, "${aws_s3_bucket.lake.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
  statement {
    # objects are encrypted with the lake's key only (a writer naming another key is refused;
    # one naming none gets the bucket default above)
    sid       = "LakeKeyOnly"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.lake.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Null"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = ["false"]
    }
    condition {
      test     = "StringNotEquals"
      variable = "s3:x-amz-server-side-encryption-aws-kms-key-id"
      values   = [aws_kms_key.lake.arn]
    }
  }
}

resource "aws_s3_bucket_policy" "lake" {
  bucket     = aws_s3_bucket.lake.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.lake]
}
