locals {
  function_names = {
    trigger = "${var.name_prefix}-trigger"
    chunk   = "${var.name_prefix}-chunk"
    status  = "${var.name_prefix}-status"
    control = "${var.name_prefix}-control"
    sweep   = "${var.name_prefix}-sweep"
  }

  # Deterministic Cloud Run URLs (https://SERVICE-PROJECT_NUMBER.REGION.run.app), known before the
  # functions exist. Every function needs URLs of the bundle in its environment, its own included
  # (the chunk function enqueues its own continuations; the trigger, status, control and sweep
  # functions check the audience of operator and scheduler tokens against their own URLs). Reading
  # service_config[0].uri instead would make each function depend on itself. See README
  # "Function URLs".
  function_urls = {
    for key, name in local.function_names :
    key => "https://${name}-${data.google_project.this.number}.${var.region}.run.app"
  }

  # Every function that operators (or the scheduler SA) call checks the token's audience against
  # this one list; the sweep is called by both, so its URL is on it like the trigger's.
  operator_audiences = concat(
    [
      local.function_urls.trigger,
      local.function_urls.status,
      local.function_urls.control,
      local.function_urls.sweep,
    ],
    var.extra_operator_audiences,
  )

  # One environment for all five functions: the code validates one Settings object at start. The
  # control and sweep functions need all of it: resuming or retrying a run, and the sweep picking up
  # lost chunks, re-planning and re-arming watchdogs, enqueue chunk tasks (chunk URL and audience,
  # queue, tasks identity), as the trigger does.
  function_environment = merge(var.extra_environment, {
    BACKFILL_ENV                       = "production"
    BACKFILL_ENVIRONMENT               = var.environment
    BACKFILL_ENABLED                   = tostring(var.backfill_enabled)
    BACKFILL_PROJECT_ID                = var.project_id
    BACKFILL_DATABASE                  = var.firestore_database
    BACKFILL_TASKS_LOCATION            = google_cloud_tasks_queue.chunks.location
    BACKFILL_TASKS_QUEUE               = google_cloud_tasks_queue.chunks.name
    BACKFILL_CHUNK_URL                 = local.function_urls.chunk
    BACKFILL_CHUNK_AUDIENCE            = local.function_urls.chunk
    BACKFILL_STATUS_URL                = local.function_urls.status
    BACKFILL_OPERATOR_AUDIENCES        = join(",", local.operator_audiences)
    BACKFILL_OPERATORS                 = join(",", var.operators)
    BACKFILL_VIEWERS                   = join(",", var.viewers)
    BACKFILL_APPROVERS                 = join(",", var.approvers)
    BACKFILL_SCHEDULER_IDENTITY        = google_service_account.scheduler.email
    BACKFILL_TASKS_IDENTITY            = google_service_account.tasks.email
    BACKFILL_TASK_MAX_ATTEMPTS         = tostring(var.task_max_attempts) # == the queue's retry_config.max_attempts
    BACKFILL_TIME_BUDGET_SECONDS       = tostring(var.time_budget_seconds)
    BACKFILL_DISPATCH_DEADLINE_SECONDS = tostring(var.dispatch_deadline_seconds)
    BACKFILL_MAX_ACTIVE_RUNS           = tostring(var.max_active_runs)
    BACKFILL_LEASE_SECONDS             = tostring(var.lease_seconds)
    BACKFILL_BREAKER_ERROR_RATE        = tostring(var.breaker_error_rate)
    BACKFILL_BREAKER_MIN_EVENTS        = tostring(var.breaker_min_events)
    BACKFILL_POISON_ATTEMPTS           = tostring(var.poison_attempts)
    BACKFILL_SETTLE_MINUTES            = tostring(var.settle_minutes)
    BACKFILL_CHAIN_POLL_SECONDS        = tostring(var.chain_poll_seconds)
    BACKFILL_QUEUE_CONCURRENCY         = tostring(var.queue_max_concurrent_dispatches) # == the queue's rate_limits
    BACKFILL_CHUNK_GOAL_SECONDS        = tostring(var.chunk_goal_seconds)
    BACKFILL_CHUNK_EVENTS_PER_SECOND   = tostring(var.chunk_events_per_second)
    BACKFILL_RAMP_START_WRITES         = tostring(var.ramp_start_writes)
    BACKFILL_RAMP_STEP_MINUTES         = tostring(var.ramp_step_minutes)
    BACKFILL_ALLOW_NEGATIVE_WALLETS    = tostring(var.allow_negative_wallets)
    BACKFILL_PLAN_MAX_AGE_HOURS        = tostring(var.plan_max_age_hours)
    BACKFILL_ALERTING_ENABLED          = tostring(var.alerting_enabled)
    BACKFILL_ALERT_ERROR_RATE          = tostring(var.alert_error_rate)
    BACKFILL_ALERT_MIN_EVENTS          = tostring(var.alert_min_events)
    BACKFILL_NOTICES_TOPIC             = google_pubsub_topic.notices.name
    BACKFILL_PLAN_TOLERANCE            = tostring(var.plan_tolerance)
    # PayNow's Management API (webhook_recovery, read by the chunk function). The API key is not
    # here: it reaches the chunk function alone from Secret Manager (functions.tf, secrets.tf).
    BACKFILL_PAYNOW_API_URL         = var.paynow_api_url
    BACKFILL_PAYNOW_STORE_ID        = var.paynow_store_id
    BACKFILL_PAYNOW_WEBHOOK_ID      = var.paynow_webhook_id
    BACKFILL_PAYNOW_RATE_PER_SECOND = tostring(var.paynow_rate_per_second)
    BACKFILL_PAYNOW_BURST           = tostring(var.paynow_burst)
    BACKFILL_PAYNOW_RATE_FRACTION   = tostring(var.paynow_rate_fraction)
    BACKFILL_PAYNOW_RETENTION_DAYS  = tostring(var.paynow_retention_days)
    BACKFILL_PAYNOW_TIMEOUT_SECONDS = tostring(var.paynow_timeout_seconds)
    }, var.max_events_per_second == null ? {} : {
    BACKFILL_MAX_EVENTS_PER_SECOND = tostring(var.max_events_per_second)
    }, var.split_events == null ? {} : {
    BACKFILL_SPLIT_EVENTS = tostring(var.split_events)
    }, var.require_plan == null ? {} : {
    BACKFILL_REQUIRE_PLAN = tostring(var.require_plan)
    }, var.require_reason == null ? {} : {
    BACKFILL_REQUIRE_REASON = tostring(var.require_reason)
    }, var.approval_events == null ? {} : {
    BACKFILL_APPROVAL_EVENTS = tostring(var.approval_events)
    }, var.approval_points == null ? {} : {
    BACKFILL_APPROVAL_POINTS = tostring(var.approval_points)
    }, var.require_preflight == null ? {} : {
    BACKFILL_REQUIRE_PREFLIGHT = tostring(var.require_preflight)
    }, var.max_points == null ? {} : {
    BACKFILL_MAX_POINTS = tostring(var.max_points)
    }, var.max_points_per_customer == null ? {} : {
    BACKFILL_MAX_POINTS_PER_CUSTOMER = tostring(var.max_points_per_customer)
  })

  # webhook_recovery is configured once the store and webhook ids are set (a precondition in
  # functions.tf refuses one without the other); only then does the chunk function get the key.
  paynow_recovery_configured = var.paynow_store_id != "" && var.paynow_webhook_id != ""

  # The chunk function's environment: the others', plus, once webhook_recovery is configured,
  # the file its PayNow API key is read from: mount_path/path of its secret volume
  # (functions.tf). A path, not a secret; the other functions never read the key, so they get
  # no path to one.
  chunk_environment = merge(local.function_environment, local.paynow_recovery_configured ? {
    BACKFILL_PAYNOW_API_KEY_FILE = "/etc/secrets/paynow/api-key"
  } : {})

  chunk_max_instances = coalesce(var.chunk_max_instances, var.queue_max_concurrent_dispatches)

  # IAM member strings of the operators: service accounts are recognised by their domain.
  operator_members = [
    for email in var.operators :
    endswith(email, ".gserviceaccount.com") ? "serviceAccount:${email}" : "user:${email}"
  ]
  viewer_members = [
    for email in var.viewers :
    endswith(email, ".gserviceaccount.com") ? "serviceAccount:${email}" : "user:${email}"
  ]

  labels = merge(var.labels, { app = "backfill-bundle" })
}
