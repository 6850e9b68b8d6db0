output "lake_uri" {
  value = "s3://${aws_s3_bucket.lake.bucket}/${var.prefix}"
}

output "kms_key_arn" {
  value = aws_kms_key.lake.arn
}

# Role ARNs for the chart's serviceAccount annotations (eks.amazonaws.com/role-arn).
output "role_arns" {
  value = { for name, role in aws_iam_role.lake : name => role.arn }
}
