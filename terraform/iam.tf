locals {
  lake   = "${aws_s3_bucket.lake.arn}/${var.prefix}"
  tables = "${local.lake}/v1"
  # The Helm chart's service accounts (infra/helm/kprobe) each role trusts: the replay runner
  # reads the lake and writes job reports as the API does.
  service_accounts = {
    agent     = ["${var.helm_release}-agent"]
    compactor = ["${var.helm_release}-compactor"]
    analyzer  = ["${var.helm_release}-analyzer"]
    reader    = ["${var.helm_release}-api", "${var.helm_release}-replay"]
  }
  # Data files an agent writes: its node's partitions, or every node's (see agent_node_scoped).
  agent_data = var.agent_node_scoped ? "${local.tables}/*/node=$${aws:PrincipalTag/kprobe-node}/*" : "${local.tables}/*/node=*"
  # Delta commit-log files: the log cleanup after a checkpoint deletes these kinds only.
  log_files = ["${local.tables}/*/_delta_log/*.json", "${local.tables}/*/_delta_log/*.checkpoint*.parquet",
  "${local.tables}/*/_delta_log/*.crc"]
}

# -- trust: IRSA (a service account of the release) and/or plain AWS principals --------------
data "aws_iam_policy_document" "trust" {
  for_each = local.service_accounts

  dynamic "statement" {
    for_each = var.oidc_provider_arn == "" ? [] : [each.value]
    content {
      sid     = "IRSA"
      actions = ["sts:AssumeRoleWithWebIdentity"]
      principals {
        type        = "Federated"
        identifiers = [var.oidc_provider_arn]
      }
      condition {
        test     = "StringEquals"
        variable = "${var.oidc_issuer}:sub"
        values   = [for sa in statement.value : "system:serviceaccount:${var.namespace}:${sa}"]
      }
      condition {
        test     = "StringEquals"
        variable = "${var.oidc_issuer}:aud"
        values   = ["sts.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = length(lookup(var.trusted_principal_arns, each.key, [])) == 0 ? [] : [each.key]
    content {
      sid = "Principals"
      # the agent's node tag travels as a session tag (agent_node_scoped)
      actions = each.key == "agent" ? ["sts:AssumeRole", "sts:TagSession"] : ["sts:AssumeRole"]
      principals {
        type        = "AWS"
        identifiers = var.trusted_principal_arns[statement.value]
      }
    }
  }
}

resource "aws_iam_role" "lake" {
  for_each           = local.service_accounts
  name               = "kprobe-${each.key}-${var.bucket}"
  description        = "kprobe ${each.key} on s3://${var.bucket}/${var.prefix}"
  assume_role_policy = data.aws_iam_policy_document.trust[each.key].json
}

resource "aws_iam_role_policy" "lake" {
  for_each = local.service_accounts
  name     = "kprobe-lake"
  role     = aws_iam_role.lake[each.key].id
  policy   = data.aws_iam_policy_document.role[each.key].json
}

# -- what each may do -------------------------------------------------------------------------
locals {
  list_lake = {
    sid       = "ListLake"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
    prefix    = ["${var.prefix}/*", var.prefix]
  }
  statements = {
    agent = [
      { sid = "ReadTables", actions = ["s3:GetObject"], resources = ["${local.tables}/*"] },
      { sid = "WriteOwnPartitions", actions = ["s3:PutObject"], resources = [local.agent_data] },
      { sid = "Commit", actions = ["s3:PutObject"], resources = ["${local.tables}/*/_delta_log/*"] },
      { sid = "CleanCommitLog", actions = ["s3:DeleteObject"], resources = local.log_files },
    ]
    compactor = [
      { sid = "RewriteAndVacuum", actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], resources = ["${local.tables}/*"] },
    ]
    analyzer = [
      { sid = "ReadLake", actions = ["s3:GetObject"], resources = ["${local.lake}/*"] },
      { sid = "PublishGraphs", actions = ["s3:PutObject", "s3:DeleteObject"], resources = ["${local.lake}/graphs/*"] },
      { sid = "ReplaceCausalEdges", actions = ["s3:PutObject", "s3:DeleteObject"], resources = ["${local.tables}/causal_edges/*"] },
    ]
    reader = [
      { sid = "ReadLake", actions = ["s3:GetObject"], resources = ["${local.lake}/*"] },
      { sid = "ReplayJobs", actions = ["s3:PutObject", "s3:DeleteObject"], resources = ["${local.lake}/jobs/*"] },
    ]
  }
  # The API analyses a window nobody analysed yet when asked for one of its payments (kprobe
  # serve, without --no-analyze): then it writes what the analyzer writes, and nothing else.
  on_demand_analysis = [
    { sid = "OnDemandGraphs", actions = ["s3:PutObject", "s3:DeleteObject"], resources = ["${local.lake}/graphs/*"] },
    { sid = "OnDemandCausalEdges", actions = ["s3:PutObject", "s3:DeleteObject"], resources = ["${local.tables}/causal_edges/*"] },
  ]
  # Encrypt (writers) or decrypt only, and only through S3 in this bucket's region.
  kms_actions = {
    agent     = ["kms:Decrypt", "kms:GenerateDataKey"]
    compactor = ["kms:Decrypt", "kms:GenerateDataKey"]
    analyzer  = ["kms:Decrypt", "kms:GenerateDataKey"]
    reader    = ["kms:Decrypt", "kms:GenerateDataKey"]
  }
}

data "aws_iam_policy_document" "role" {
  for_each = local.service_accounts

  statement {
    sid       = local.list_lake.sid
    actions   = local.list_lake.actions
    resources = local.list_lake.resources
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = local.list_lake.prefix
    }
  }

  dynamic "statement" {
    for_each = local.statements[each.key]
    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = statement.value.resources
    }
  }

  dynamic "statement" {
    for_each = each.key == "reader" && var.api_analyzes_on_demand ? local.on_demand_analysis : []
    content {
      sid       = statement.value.sid
      actions   = statement.value.actions
      resources = statement.value.resources
    }
  }

  statement {
    sid       = "LakeKey"
    actions   = local.kms_actions[each.key]
    resources = [aws_kms_key.lake.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${aws_s3_bucket.lake.region}.amazonaws.com"]
    }
  }
}
