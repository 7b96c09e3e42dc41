locals {
  # Both jobs call an api-sized function (var.api_timeout_seconds): wait for it no longer than its
  # timeout, and within Cloud Scheduler's limit for HTTP targets (30 minutes).
  scheduler_attempt_deadline = "${min(var.api_timeout_seconds, 1800)}s"
}

# Nightly safety net (off by default): replay the last two days of webhooks the live path may
# have missed. Replays are idempotent, so overlapping windows from night to night are harmless.
# The trigger derives the run id from the X-CloudScheduler-ScheduleTime header Cloud Scheduler
# sends (the firing's scheduled time, the same on every attempt of that firing), so a retried or
# twin delivery of one firing finds its run already there and does not start a second one.
resource "google_cloud_scheduler_job" "nightly_webhook_replay" {
  count = var.scheduler_enabled ? 1 : 0

  name        = "${var.name_prefix}-nightly-webhook-replay"
  region      = var.region
  description = "Starts a webhook_replay backfill run over the last two days. The run id derives from the X-CloudScheduler-ScheduleTime header, so a retried or twin firing of the same schedule time does not start a second run."
  schedule    = var.scheduler_schedule
  time_zone   = var.scheduler_time_zone

  # The trigger only plans the run and enqueues its chunk tasks; it answers within its timeout.
  attempt_deadline = local.scheduler_attempt_deadline

  # No retries: a missed night is covered by the next night's two-day window. (A retry would be
  # safe: it carries the same schedule time, hence the same run id, and starts nothing new.)
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = local.function_urls.trigger
    headers = {
      "Content-Type" = "application/json"
    }
    body = base64encode(jsonencode({
      type         = "webhook_replay"
      lookbackDays = 2
      dryRun       = false
      maxEvents    = 50000
    }))

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = local.function_urls.trigger
    }
  }

  depends_on = [
    google_project_service.required,
    google_cloud_run_v2_service_iam_member.scheduler_invokes_trigger,
  ]
}

# Durable safety net (on by default): every few minutes, sweep every active run (pending or
# running). Each run's own watchdog task lives on the chunk queue, so it can be lost with the very
# tasks it guards: the queue drops a task after max_attempts while the chunk function is down (the
# watchdog's delivery fails like any other), or the queue itself is lost. A run must then still
# recover without an operator: the sweep picks up chunks whose lease expired and whose task no
# longer exists, re-plans a run whose planning task was lost, and re-arms the run's watchdog.
# Independent of var.scheduler_enabled, which gates only the nightly replay above.
resource "google_cloud_scheduler_job" "sweep" {
  count = var.sweep_enabled ? 1 : 0

  name        = "${var.name_prefix}-sweep"
  region      = var.region
  description = "Sweeps every active backfill run: picks up lost chunk tasks, lost planning and lost watchdog tasks, so a run recovers without an operator."
  schedule    = var.sweep_schedule
  time_zone   = "Etc/UTC"

  # The sweep reads the active runs and enqueues a few tasks each; it answers within its timeout.
  # Two sweeps at once are harmless (task names are deterministic, moves run under update times).
  attempt_deadline = local.scheduler_attempt_deadline

  # No retries: the next firing, minutes later, sweeps again and covers a missed or failed one.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "${local.function_urls.sweep}/api/jobs/sweep"
    headers = {
      "Content-Type" = "application/json"
    }
    body = base64encode(jsonencode({}))

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = local.function_urls.sweep
    }
  }

  depends_on = [
    google_project_service.required,
    google_cloud_run_v2_service_iam_member.scheduler_invokes_sweep,
  ]
}
