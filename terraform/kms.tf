data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

# The lake's key: SSE-KMS for every object (data, commit logs, graph snapshots, replay jobs).
resource "aws_kms_key" "lake" {
  description             = "kprobe lake ${var.bucket}"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "lake" {
  name          = "alias/kprobe-${var.bucket}"
  target_key_id = aws_kms_key.lake.key_id
}

data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_111: a key policy's resource "*" is this key alone; the account root administers it (AWS's default key policy)
  # checkov:skip=CKV_AWS_356: as above: in a key policy "*" names the key itself
  # checkov:skip=CKV_AWS_109: as above: key administration by the account that owns the key
  # Key administration stays with the account; use of the key is granted by the roles'
  # own policies (iam.tf), through S3 only.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}
