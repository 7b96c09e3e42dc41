# The deploy source: scripts/package_functions.sh writes var.function_source_dir, Terraform zips
# it and uploads it under a name derived from its content, so a code change (and only a code
# change) makes a new object and redeploys the five functions.

locals {
  source_files = sort(fileset(var.function_source_dir, "**"))
  source_hash = sha256(join("\n", [
    for file in local.source_files : "${file}:${filesha256("${var.function_source_dir}/${file}")}"
  ]))
}

data "archive_file" "functions" {
  type        = "zip"
  source_dir  = var.function_source_dir
  output_path = "${path.module}/.build/functions-${substr(local.source_hash, 0, 16)}.zip"

  lifecycle {
    precondition {
      condition     = contains(local.source_files, "main.py") && contains(local.source_files, "requirements.txt") && contains(local.source_files, "shared/__init__.py")
      error_message = "function_source_dir holds no packaged functions: run scripts/package_functions.sh <function_source_dir> first."
    }
  }
}

resource "google_storage_bucket" "function_source" {
  name                        = "${var.project_id}-${var.name_prefix}-src"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels

  depends_on = [google_project_service.required]
}

resource "google_storage_bucket_object" "functions" {
  name   = "functions-${local.source_hash}.zip"
  bucket = google_storage_bucket.function_source.name
  source = data.archive_file.functions.output_path
}

# Ingress: operators call the trigger, status, control and sweep functions from outside Google
# Cloud (no load balancer in front), so those take traffic from anywhere and IAM plus the code's
# token checks gate every request. Only Cloud Tasks calls the chunk function, and Cloud Run's
# internal ingress admits Cloud Tasks of the same project, so the chunk function is not reachable
# from the internet at all (checkov's CKV_GCP_124 sees one resource: see infra/.checkov.yaml).
locals {
  functions = {
    trigger = {
      entry_point   = "backfill_trigger"
      description   = "Starts a backfill run: POST by operators and Cloud Scheduler (OIDC)."
      timeout       = var.api_timeout_seconds
      memory        = var.api_memory
      max_instances = var.api_max_instances
      ingress       = "ALLOW_ALL"
    }
    chunk = {
      entry_point   = "backfill_chunk"
      description   = "Processes one chunk of a backfill run: the Cloud Tasks target (OIDC)."
      timeout       = var.chunk_timeout_seconds
      memory        = var.chunk_memory
      max_instances = local.chunk_max_instances
      ingress       = "ALLOW_INTERNAL_ONLY"
    }
    status = {
      entry_point   = "backfill_status"
      description   = "Reports a backfill run's progress: GET by operators (OIDC)."
      timeout       = var.api_timeout_seconds
      memory        = var.api_memory
      max_instances = var.api_max_instances
      ingress       = "ALLOW_ALL"
    }
    # Resuming or retrying a run enqueues chunk tasks, as the trigger does: same size and timeout.
    control = {
      entry_point   = "backfill_control"
      description   = "Operator run control: POST /api/admin/dataMigrations/{migrationId}/{pause|resume|cancel|retry|throttle|rollback} by operators (OIDC)."
      timeout       = var.api_timeout_seconds
      memory        = var.api_memory
      max_instances = var.api_max_instances
      ingress       = "ALLOW_ALL"
    }
    # The durable safety net, called by Cloud Scheduler (scheduler.tf) and by operators: it walks
    # every active run and enqueues what was lost (chunk tasks, planning, the run's watchdog task).
    # Like control it does Firestore reads and enqueues a few tasks per run: same size and timeout.
    sweep = {
      entry_point   = "backfill_sweep"
      description   = "Safety net: POST /api/jobs/sweep by Cloud Scheduler and operators (OIDC); picks up lost chunks, lost planning and lost watchdog tasks of every active run."
      timeout       = var.api_timeout_seconds
      memory        = var.api_memory
      max_instances = var.api_max_instances
      ingress       = "ALLOW_ALL"
    }
  }
}

resource "google_cloudfunctions2_function" "backfill" {
  for_each = local.functions

  name        = local.function_names[each.key]
  location    = var.region
  description = each.value.description
  labels      = local.labels

  build_config {
    runtime         = "python311"
    entry_point     = each.value.entry_point
    service_account = var.build_service_account

    source {
      storage_source {
        bucket = google_storage_bucket.function_source.name
        object = google_storage_bucket_object.functions.name
      }
    }
  }

  service_config {
    # The chunk function runs as its own SA, the only one that may read the PayNow API key.
    service_account_email          = each.key == "chunk" ? google_service_account.chunk.email : google_service_account.runtime.email
    environment_variables          = each.key == "chunk" ? local.chunk_environment : local.function_environment
    timeout_seconds                = each.value.timeout
    available_memory               = each.value.memory
    max_instance_count             = each.value.max_instances
    min_instance_count             = 0
    ingress_settings               = each.value.ingress
    all_traffic_on_latest_revision = true

    # The PayNow API key, to the chunk function only, as a file of a Secret Manager volume, never
    # an environment variable: each read of the file fetches the secret's latest version, so a
    # rotated key reaches running instances with no redeploy (the code reads the file again when
    # PayNow refuses its key), and nothing reads a volume at instance start, so an unreadable
    # secret fails recovery's calls, never the chunk function's start. local.chunk_environment
    # names the file (BACKFILL_PAYNOW_API_KEY_FILE). Both only once webhook_recovery is
    # configured (store and webhook ids set). See README "PayNow API key (webhook_recovery)".
    dynamic "secret_volumes" {
      for_each = each.key == "chunk" && local.paynow_recovery_configured ? ["paynow"] : []

      content {
        mount_path = "/etc/secrets/paynow"
        project_id = data.google_project.this.number # the number, as the API returns it: no diff
        secret     = google_secret_manager_secret.paynow_api_key.secret_id

        versions {
          version = "latest"
          path    = "api-key"
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = length("${local.function_names[each.key]}-${data.google_project.this.number}") <= 63
      error_message = "The function's deterministic URL needs name + \"-\" + project number to fit one 63-character DNS label; shorten name_prefix."
    }
    precondition {
      condition     = each.key != "chunk" || var.dispatch_deadline_seconds <= var.chunk_timeout_seconds
      error_message = "dispatch_deadline_seconds must be <= chunk_timeout_seconds, or Cloud Tasks would wait for a request the function has already abandoned."
    }
    precondition {
      condition     = var.time_budget_seconds > 0 && var.time_budget_seconds * 2 <= var.dispatch_deadline_seconds
      error_message = "time_budget_seconds must be at most half of dispatch_deadline_seconds (the code refuses to start otherwise)."
    }
    precondition {
      condition     = var.lease_seconds >= var.dispatch_deadline_seconds
      error_message = "lease_seconds must be >= dispatch_deadline_seconds: a chunk task's attempt may work for up to the dispatch deadline between checkpoints, and a shorter lease would let the run's watchdog pick that chunk up again while the attempt is still writing."
    }
    precondition {
      condition     = (var.paynow_store_id == "") == (var.paynow_webhook_id == "")
      error_message = "Set both paynow_store_id and paynow_webhook_id (webhook_recovery configured) or neither: webhook_recovery needs both."
    }
    precondition {
      condition     = var.poison_attempts < var.task_max_attempts
      error_message = "poison_attempts must be below task_max_attempts, so a failing event is recorded and passed over before its chunk's task runs out of attempts (the code refuses to start otherwise)."
    }
  }

  # Cloud Run checks at deploy time that the function's SA may read its secrets.
  depends_on = [
    google_project_service.required,
    google_project_iam_member.runtime,
    google_project_iam_member.chunk,
    google_secret_manager_secret_iam_member.chunk_reads_paynow_api_key,
  ]
}
