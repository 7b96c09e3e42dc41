# One Cloud Task per chunk (and per continuation of a chunk that ran out of time budget), plus one
# watchdog task per active run: scheduled minutes ahead and re-armed while the run is active, it
# picks up chunks whose lease (var.lease_seconds) ran out. See README "Run control".
# retry_config.max_attempts is passed to the code as BACKFILL_TASK_MAX_ATTEMPTS (locals.tf), so a
# handler knows when it is running a task's last attempt; both come from var.task_max_attempts.
#
# The throttle (README "Throttle") shares a run's ceiling among its chunks running at once, which
# rate_limits.max_concurrent_dispatches bounds; the ramp bounds the writes of all of them.
resource "google_cloud_tasks_queue" "chunks" {
  name     = "${var.name_prefix}-chunks"
  location = var.region

  rate_limits {
    max_concurrent_dispatches = var.queue_max_concurrent_dispatches
    max_dispatches_per_second = var.queue_max_dispatches_per_second
  }

  retry_config {
    max_attempts  = var.task_max_attempts
    min_backoff   = "2s"
    max_backoff   = "300s"
    max_doublings = 5
  }

  stackdriver_logging_config {
    sampling_ratio = 1.0
  }

  depends_on = [google_project_service.required]
}

# A default ceiling below one event a second per chunk the queue may run at once would leave
# chunks idling in their tasks: say so at plan time.
check "ceiling_covers_the_queue" {
  assert {
    condition     = var.max_events_per_second == null ? true : var.max_events_per_second >= var.queue_max_concurrent_dispatches
    error_message = "max_events_per_second is below queue_max_concurrent_dispatches: each running chunk would get less than one event a second."
  }
}
