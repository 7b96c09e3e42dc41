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
  attempt_deadline = "${min(var.api_timeout_seconds, 1800)}s"

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
