# Log-based metrics on the functions' structured logs (every record carries
# jsonPayload.component = "backfill"). The chunk handler writes one line per committed page
# (message var.page_log_message) with the page's counts: event_count, applied, duplicates,
# skipped, errors, and dry_run. Counters cannot add up a field, so the per-page counts are
# distribution metrics: the sum of a distribution over a period is the total for that period.
#
# Every change of a run's status is one line (message var.status_log_message) with the new
# `status` and a `reason`; the circuit breaker's reason starts with "circuit breaker:", the kill
# switch's with "BACKFILL_ENABLED=false". Two counters below pick those out.
#
# A sweep (the scheduled safety net) that enqueued lost work again writes one line (message
# var.sweep_log_message, field `chunks`: the tasks it enqueued); a third counter counts those
# sweeps. Each means an active run had lost a chunk or planning task that nobody had picked up
# yet (the sweep runs more often than a run's watchdog, so it is usually first). The runs are in
# the per-run lines of the same request, "watchdog picked up lost work" with `migration_id`.

# The seed runbook's metrics: events processed (per page), each run's error rate and the
# duration of pages and runs (from the run-summary line, message var.summary_log_message), and
# failed events by code (one ERROR line each, message var.failure_log_message).
# tests/unit/test_monitoring.py pins every jsonPayload field these filters and extractors read
# to the lines the code writes.

locals {
  backfill_logs      = "jsonPayload.component=\"backfill\""
  page_logs          = "${local.backfill_logs} AND jsonPayload.message=\"${var.page_log_message}\""
  status_logs        = "${local.backfill_logs} AND jsonPayload.message=\"${var.status_log_message}\""
  sweep_logs         = "${local.backfill_logs} AND jsonPayload.message=\"${var.sweep_log_message}\""
  summary_logs       = "${local.backfill_logs} AND jsonPayload.message=\"${var.summary_log_message}\""
  failure_logs       = "${local.backfill_logs} AND jsonPayload.message=\"${var.failure_log_message}\""
  stall_logs         = "${local.backfill_logs} AND jsonPayload.message=\"${var.stall_log_message}\""
  running_error_logs = "${local.backfill_logs} AND jsonPayload.message=\"${var.error_rate_log_message}\""

  page_count_metrics = {
    events_processed = {
      field        = "event_count"
      display_name = "Backfill events processed per page"
      description  = "Events read and handled per committed page (sum = events processed)."
    }
    events_applied = {
      field        = "applied"
      display_name = "Backfill events applied per page"
      description  = "Events whose ledger effect a page applied (sum = events applied)."
    }
    event_errors = {
      field        = "errors"
      display_name = "Backfill event errors per page"
      description  = "Events that failed per committed page (sum = event errors)."
    }
  }
}

resource "google_logging_metric" "page_counts" {
  for_each = local.page_count_metrics

  name        = "${var.name_prefix}/${each.key}"
  description = each.value.description
  filter      = "${local.page_logs} AND jsonPayload.${each.value.field}>0"

  value_extractor = "EXTRACT(jsonPayload.${each.value.field})"
  label_extractors = {
    dry_run = "EXTRACT(jsonPayload.dry_run)"
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "1"
    display_name = each.value.display_name
    labels {
      key         = "dry_run"
      value_type  = "STRING"
      description = "true for dry runs, which report instead of committing."
    }
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 16
      growth_factor      = 2
      scale              = 1
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_logging_metric" "processed_events" {
  name        = "backfill_processed_events"
  description = "Events a committed page settled (applied or already there), per page: the sum over a period is the events processed in it."
  filter      = "${local.page_logs} AND jsonPayload.processed>0"

  value_extractor = "EXTRACT(jsonPayload.processed)"
  label_extractors = {
    type    = "EXTRACT(jsonPayload.type)"
    dry_run = "EXTRACT(jsonPayload.dry_run)"
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "1"
    display_name = "Backfill processed events"
    labels {
      key         = "type"
      value_type  = "STRING"
      description = "The backfill type of the run."
    }
    labels {
      key         = "dry_run"
      value_type  = "STRING"
      description = "true for dry runs."
    }
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 16
      growth_factor      = 2
      scale              = 1
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_logging_metric" "error_rate" {
  name        = "backfill_error_rate"
  description = "Each ended run's share of failed events (errors / events taken), from its run-summary line."
  filter      = local.summary_logs

  value_extractor = "EXTRACT(jsonPayload.error_rate)"
  label_extractors = {
    type    = "EXTRACT(jsonPayload.type)"
    dry_run = "EXTRACT(jsonPayload.dry_run)"
    status  = "EXTRACT(jsonPayload.status)"
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "1"
    display_name = "Backfill run error rate"
    labels {
      key         = "type"
      value_type  = "STRING"
      description = "The backfill type of the run."
    }
    labels {
      key         = "dry_run"
      value_type  = "STRING"
      description = "true for dry runs."
    }
    labels {
      key         = "status"
      value_type  = "STRING"
      description = "How the run ended: completed, failed or cancelled."
    }
  }

  bucket_options {
    explicit_buckets {
      bounds = [0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1]
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_logging_metric" "operation_duration" {
  name        = "backfill_operation_duration"
  description = "How long pages (page lines) and whole runs (run-summary lines) took, in milliseconds."
  filter      = "(${local.page_logs}) OR (${local.summary_logs})"

  value_extractor = "EXTRACT(jsonPayload.duration_ms)"
  label_extractors = {
    operation = "EXTRACT(jsonPayload.message)"
    type      = "EXTRACT(jsonPayload.type)"
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "ms"
    display_name = "Backfill operation duration"
    labels {
      key         = "operation"
      value_type  = "STRING"
      description = "The log line's message: var.page_log_message (a page) or var.summary_log_message (a run)."
    }
    labels {
      key         = "type"
      value_type  = "STRING"
      description = "The backfill type of the run."
    }
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 24
      growth_factor      = 2
      scale              = 1
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_logging_metric" "failed_events" {
  name        = "backfill_failed_events"
  description = "Events that failed, one ERROR line each, by error code."
  filter      = local.failure_logs

  label_extractors = {
    code    = "EXTRACT(jsonPayload.code)"
    dry_run = "EXTRACT(jsonPayload.dry_run)"
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Backfill failed events"
    labels {
      key         = "code"
      value_type  = "STRING"
      description = "The per-event error code (malformed_payload, product_not_found, ...)."
    }
    labels {
      key         = "dry_run"
      value_type  = "STRING"
      description = "true for dry runs."
    }
  }

  depends_on = [google_project_service.required]
}

# Counters that alerting can threshold directly.
resource "google_logging_metric" "pages_with_errors" {
  name        = "${var.name_prefix}/pages_with_errors"
  description = "Applied pages that reported at least one event error."
  filter      = "${local.page_logs} AND jsonPayload.errors>0"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Backfill pages with event errors"
  }

  depends_on = [google_project_service.required]
}

resource "google_logging_metric" "error_logs" {
  name        = "${var.name_prefix}/error_logs"
  description = "Backfill log records at severity ERROR or above (failed requests, failed runs)."
  filter      = "${local.backfill_logs} AND severity>=ERROR"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Backfill error logs"
  }

  depends_on = [google_project_service.required]
}

resource "google_logging_metric" "runs_stopped_by_breaker" {
  name        = "${var.name_prefix}/runs_stopped_by_breaker"
  description = "Live runs the circuit breaker stopped as failed: their per-event error rate exceeded BACKFILL_BREAKER_ERROR_RATE after BACKFILL_BREAKER_MIN_EVENTS events."
  filter      = "${local.status_logs} AND jsonPayload.status=\"failed\" AND jsonPayload.reason=~\"^circuit breaker:\""

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Backfill runs stopped by the circuit breaker"
  }

  depends_on = [google_project_service.required]
}

resource "google_logging_metric" "runs_paused_by_kill_switch" {
  name        = "${var.name_prefix}/runs_paused_by_kill_switch"
  description = "Runs paused because BACKFILL_ENABLED was false (the kill switch); they wait for an operator to resume them."
  filter      = "${local.status_logs} AND jsonPayload.status=\"paused\" AND jsonPayload.reason=~\"^BACKFILL_ENABLED=false\""

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Backfill runs paused by the kill switch"
  }

  depends_on = [google_project_service.required]
}

resource "google_logging_metric" "runs_stalled" {
  name        = "${var.name_prefix}/runs_stalled"
  description = "Watchdog rounds that found chunks of an active run with no progress for a lease (the watchdog picks them up again; the run's notice says which)."
  filter      = local.stall_logs

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Backfill runs stalled"
  }

  depends_on = [google_project_service.required]
}

resource "google_logging_metric" "runs_failing_while_running" {
  name        = "${var.name_prefix}/runs_failing_while_running"
  description = "Watchdog rounds of a live, running run whose share of failed events is above alert_error_rate (after alert_min_events events): the run has not ended yet."
  filter      = local.running_error_logs

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Backfill live runs failing while they run"
  }

  depends_on = [google_project_service.required]
}

resource "google_logging_metric" "sweep_recoveries" {
  name        = "${var.name_prefix}/sweep_recoveries"
  description = "Sweeps that enqueued lost chunk or planning tasks of active runs again: runs needed the safety net. The runs: log lines jsonPayload.message=\"watchdog picked up lost work\" (field migration_id)."
  filter      = local.sweep_logs

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Backfill sweeps that picked up lost work"
  }

  depends_on = [google_project_service.required]
}

# Starting points, off by default: wire notification channels before turning them on.
resource "google_monitoring_alert_policy" "backfill_errors" {
  count = var.alerting_enabled ? 1 : 0

  display_name          = "Backfill: event errors or error logs"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels

  conditions {
    display_name = "Pages with event errors"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.pages_with_errors.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_error_pages_threshold
      duration        = "0s"

      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  conditions {
    display_name = "Backfill error logs"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.error_logs.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A backfill run reported failed events or errors. Check the run with the status function (`GET ${local.function_urls.status}`) and the logs: `jsonPayload.component=\"backfill\" severity>=WARNING`. Item errors are stored per run under `dataMigrations/{migrationId}/errors`."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

# The seed runbook's alert: a live run ended with more than var.alert_error_rate of its events
# failed. (A run failing faster than that is stopped by the circuit breaker, alerted below.)
resource "google_monitoring_alert_policy" "backfill_error_rate" {
  count = var.alerting_enabled ? 1 : 0

  display_name          = "Backfill: run error rate above ${var.alert_error_rate * 100}%"
  combiner              = "OR"
  notification_channels = var.alert_notification_channels

  conditions {
    display_name = "A live run's error rate"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.error_rate.name}\" AND metric.label.dry_run=\"false\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_error_rate
      duration        = "0s"

      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_PERCENTILE_99"
        cross_series_reducer = "REDUCE_MAX"
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A live backfill run ended with more than ${var.alert_error_rate * 100}% of its events failed. Find it: `jsonPayload.component=\"backfill\" jsonPayload.message=\"${var.summary_log_message}\" jsonPayload.error_rate>${var.alert_error_rate}`; its failures by code: `jsonPayload.message=\"${var.failure_log_message}\" jsonPayload.migration_id=\"{migrationId}\"`. Download the error CSV (`GET ${local.function_urls.status}/{migrationId}/errors`), fix the cause, retry the failed events (`POST ${local.function_urls.control}/api/admin/dataMigrations/{migrationId}/retry`), then run ledger_verify over the range."
  }

  alert_strategy {
    auto_close = "86400s"
  }
}

# Run stops that need a person: a run the breaker stopped needs a look at its errors before
# anyone retries it; runs paused by the kill switch stay paused until someone resumes them.
locals {
  run_stop_alerts = {
    breaker = {
      display_name  = "Backfill: run stopped by the circuit breaker"
      condition     = "Runs stopped by the circuit breaker"
      metric        = google_logging_metric.runs_stopped_by_breaker.name
      documentation = "A live backfill run failed more events than `BACKFILL_BREAKER_ERROR_RATE` allows and the circuit breaker stopped it (status `failed`, reason `circuit breaker: ...`). Find the run in the logs (`jsonPayload.component=\"backfill\" jsonPayload.message=\"${var.status_log_message}\" jsonPayload.reason=~\"^circuit breaker:\"`), read its errors with the status function (`GET ${local.function_urls.status}/{migrationId}`; stored under `dataMigrations/{migrationId}/errors`), fix the cause, then retry it through the control function (`POST ${local.function_urls.control}/api/admin/dataMigrations/{migrationId}/retry`)."
    }
    stalled = {
      display_name  = "Backfill: a run stalled"
      condition     = "Runs with chunks that made no progress for a lease"
      metric        = google_logging_metric.runs_stalled.name
      documentation = "Chunks of an active backfill run made no progress for a lease (`BACKFILL_LEASE_SECONDS`). The watchdog picks them up again from their cursors; if this repeats, the chunk function is failing or timing out. Find the run: `jsonPayload.component=\"backfill\" jsonPayload.message=\"${var.stall_log_message}\"` (field migration_id); its status: `GET ${local.function_urls.status}/{migrationId}`; or `backfill status {migrationId}`."
    }
    failing_while_running = {
      display_name  = "Backfill: a live run is failing while it runs"
      condition     = "Live runs above the error rate while running"
      metric        = google_logging_metric.runs_failing_while_running.name
      documentation = "A live backfill run has failed more than ${var.alert_error_rate * 100}% of its events so far and is still running. Look at its errors now (`GET ${local.function_urls.status}/{migrationId}/errors`); pause it (`POST ${local.function_urls.control}/api/admin/dataMigrations/{migrationId}/pause`) if the cause is not a few bad events. Find it: `jsonPayload.component=\"backfill\" jsonPayload.message=\"${var.error_rate_log_message}\"`."
    }
    kill_switch = {
      display_name  = "Backfill: runs paused by the kill switch"
      condition     = "Runs paused by BACKFILL_ENABLED=false"
      metric        = google_logging_metric.runs_paused_by_kill_switch.name
      documentation = "Backfill runs were paused because the functions run with `BACKFILL_ENABLED=false` (Terraform `backfill_enabled = false`). They stay paused: once the switch is back on, list them with the status function (`GET ${local.function_urls.status}?status=paused`) and resume each through the control function (`POST ${local.function_urls.control}/api/admin/dataMigrations/{migrationId}/resume`), or cancel it (`.../cancel`)."
    }
  }
}

resource "google_monitoring_alert_policy" "backfill_run_stops" {
  for_each = var.alerting_enabled ? local.run_stop_alerts : {}

  display_name          = each.value.display_name
  combiner              = "OR"
  notification_channels = var.alert_notification_channels

  conditions {
    display_name = each.value.condition
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${each.value.metric}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = each.value.documentation
  }

  alert_strategy {
    auto_close = "86400s"
  }
}
