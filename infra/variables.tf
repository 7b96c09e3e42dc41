# --- Where -------------------------------------------------------------------------------------

variable "project_id" {
  description = "Google Cloud project that holds the payment app's Firestore database."
  type        = string
}

variable "environment" {
  description = "The deployment's name (test, staging, prod), named in every answer, the status page and the CLI's banner."
  type        = string
  default     = "prod"
  validation {
    condition     = contains(["test", "staging", "prod"], var.environment)
    error_message = "environment must be test, staging or prod."
  }
}

variable "region" {
  description = "Region of the functions, the Cloud Tasks queue and the Cloud Scheduler jobs."
  type        = string
  default     = "us-central1"
}

variable "name_prefix" {
  description = "Prefix of every resource name: functions <prefix>-trigger|chunk|status|control|sweep, queue <prefix>-chunks."
  type        = string
  default     = "backfill"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.name_prefix))
    error_message = "name_prefix must be 2-20 lowercase letters, digits or hyphens, starting with a letter (it becomes part of service account ids, which allow 30 characters, and of function URLs)."
  }
}

variable "firestore_database" {
  description = "Firestore database id the live app writes to (BACKFILL_DATABASE)."
  type        = string
  default     = "(default)"
}

variable "enable_apis" {
  description = "Enable the Google APIs the bundle needs (never disabled on destroy)."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Labels added to the functions, the bucket and the other labelled resources."
  type        = map(string)
  default     = {}
}

# --- Code --------------------------------------------------------------------------------------

variable "function_source_dir" {
  description = "Directory made by scripts/package_functions.sh (main.py, shared/, requirements.txt); zipped and uploaded at plan/apply."
  type        = string
  default     = "../build/functions"
}

variable "build_service_account" {
  description = "Service account Cloud Build uses to build the functions, as projects/P/serviceAccounts/EMAIL; null uses the project's default build service account."
  type        = string
  default     = null
}

# --- Behaviour ---------------------------------------------------------------------------------

variable "backfill_enabled" {
  description = "Kill switch (BACKFILL_ENABLED): false tells the functions to refuse work, and active runs are paused (operators resume them through the control function once it is true again); flipping it is an env change, so apply redeploys the functions."
  type        = bool
  default     = true
}

variable "operators" {
  description = "Emails of the people (or service accounts) who may start, read, control and sweep runs: BACKFILL_OPERATORS and run.invoker on the trigger, status, control and sweep functions."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for email in var.operators : can(regex("^[^@:,\\s]+@[^@:,\\s]+$", email))])
    error_message = "operators must be plain email addresses (no \"user:\" prefix, no commas)."
  }
}

variable "viewers" {
  description = "Emails of identities that may read (status, errors, gaps, the page) and change nothing: run.invoker on the status function alone."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for email in var.viewers : can(regex("^[^@:,\\s]+@[^@:,\\s]+$", email))])
    error_message = "viewers must be plain email addresses (no \"user:\" prefix, no commas)."
  }
}

variable "extra_operator_audiences" {
  description = "Audiences accepted on operator tokens besides the trigger, status, control and sweep URLs (appended to BACKFILL_OPERATOR_AUDIENCES). See README before adding any."
  type        = list(string)
  default     = []
}

variable "extra_environment" {
  description = "The tuning variables Terraform leaves at the code's defaults, to set them anyway: BACKFILL_PAGE_SIZE, BACKFILL_CHUNK_DAYS, BACKFILL_MAX_RANGE_DAYS, BACKFILL_ENQUEUE_WORKERS, BACKFILL_FIRST_ERRORS_SHOWN (every other setting has a variable of its own)."
  type        = map(string)
  default     = {}

  # A misspelt name would be ignored by the functions without a word: refuse it here.
  validation {
    condition = alltrue([for name in keys(var.extra_environment) : contains([
      "BACKFILL_PAGE_SIZE", "BACKFILL_CHUNK_DAYS", "BACKFILL_MAX_RANGE_DAYS",
      "BACKFILL_ENQUEUE_WORKERS", "BACKFILL_FIRST_ERRORS_SHOWN",
    ], name)])
    error_message = "extra_environment takes only BACKFILL_PAGE_SIZE, BACKFILL_CHUNK_DAYS, BACKFILL_MAX_RANGE_DAYS, BACKFILL_ENQUEUE_WORKERS and BACKFILL_FIRST_ERRORS_SHOWN; every other setting has a variable of its own."
  }
}

variable "time_budget_seconds" {
  description = "BACKFILL_TIME_BUDGET_SECONDS: how long a chunk task works before it checkpoints and continues in a new task."
  type        = number
  default     = 240
}

variable "dispatch_deadline_seconds" {
  description = "BACKFILL_DISPATCH_DEADLINE_SECONDS: the dispatch deadline the code sets on every chunk task (Cloud Tasks allows 15-1800)."
  type        = number
  default     = 600

  validation {
    condition     = var.dispatch_deadline_seconds >= 15 && var.dispatch_deadline_seconds <= 1800
    error_message = "dispatch_deadline_seconds must be between 15 and 1800 (the Cloud Tasks limit for HTTP targets)."
  }
}

# --- Run control -------------------------------------------------------------------------------

variable "max_active_runs" {
  description = "BACKFILL_MAX_ACTIVE_RUNS: at most this many runs pending, running or paused at once; a trigger beyond it is refused unless forced."
  type        = number
  default     = 3

  validation {
    condition     = var.max_active_runs >= 1 && var.max_active_runs <= 100 && floor(var.max_active_runs) == var.max_active_runs
    error_message = "max_active_runs must be a whole number between 1 and 100."
  }
}

variable "lease_seconds" {
  description = "BACKFILL_LEASE_SECONDS: a chunk with no checkpoint for this long and no queued task is picked up again from its cursor by the run's watchdog task. Must be >= dispatch_deadline_seconds."
  type        = number
  default     = 900

  validation {
    condition     = var.lease_seconds > 0
    error_message = "lease_seconds must be positive."
  }
}

variable "breaker_error_rate" {
  description = "BACKFILL_BREAKER_ERROR_RATE: a live run whose per-event error rate exceeds this, after at least breaker_min_events events, stops as failed (circuit breaker)."
  type        = number
  default     = 0.5

  validation {
    condition     = var.breaker_error_rate > 0 && var.breaker_error_rate <= 1
    error_message = "breaker_error_rate is a fraction of events: more than 0, at most 1."
  }
}

variable "breaker_min_events" {
  description = "BACKFILL_BREAKER_MIN_EVENTS: events a live run must have handled before the circuit breaker may stop it."
  type        = number
  default     = 200

  validation {
    condition     = var.breaker_min_events >= 1 && floor(var.breaker_min_events) == var.breaker_min_events
    error_message = "breaker_min_events must be a whole number of at least 1."
  }
}

variable "poison_attempts" {
  description = "BACKFILL_POISON_ATTEMPTS: an event failing with an unexpected error this many times is recorded and passed over. Must be below task_max_attempts."
  type        = number
  default     = 3

  validation {
    condition     = var.poison_attempts >= 1 && var.poison_attempts <= 20 && floor(var.poison_attempts) == var.poison_attempts
    error_message = "poison_attempts must be a whole number between 1 and 20."
  }
}

variable "settle_minutes" {
  description = "BACKFILL_SETTLE_MINUTES: replays leave events younger than this to the live path."
  type        = number
  default     = 15

  validation {
    condition     = var.settle_minutes >= 0 && var.settle_minutes <= 1440
    error_message = "settle_minutes must be between 0 and 1440 (one day)."
  }
}

variable "chain_poll_seconds" {
  description = "BACKFILL_CHAIN_POLL_SECONDS: how often a reversal_backfill run that waits for an active overlapping webhook_replay run checks again before it plans."
  type        = number
  default     = 30

  validation {
    condition     = var.chain_poll_seconds > 0 && var.chain_poll_seconds <= 3600
    error_message = "chain_poll_seconds must be more than 0 and at most 3600 (one hour)."
  }
}

variable "chunk_goal_seconds" {
  description = "BACKFILL_CHUNK_GOAL_SECONDS: how long one chunk should run; planning splits a window holding more than chunk_goal_seconds x chunk_events_per_second eligible events into smaller windows (an incident day runs as many chunks)."
  type        = number
  default     = 60

  validation {
    condition     = var.chunk_goal_seconds > 0 && var.chunk_goal_seconds <= 3600
    error_message = "chunk_goal_seconds must be more than 0 and at most 3600."
  }
}

variable "chunk_events_per_second" {
  description = "BACKFILL_CHUNK_EVENTS_PER_SECOND: the expected rate of one chunk's page loop (make bench measures it on the local stack; production's is higher), with which planning sizes chunks."
  type        = number
  default     = 200

  validation {
    condition     = var.chunk_events_per_second > 0 && var.chunk_events_per_second <= 100000
    error_message = "chunk_events_per_second must be more than 0 and at most 100000."
  }
}

variable "split_events" {
  description = "BACKFILL_SPLIT_EVENTS: a fixed number of eligible events above which planning splits a window, instead of chunk_goal_seconds x chunk_events_per_second (null: the goal)."
  type        = number
  default     = null

  validation {
    condition     = var.split_events == null ? true : var.split_events >= 10
    error_message = "split_events must be at least 10."
  }
}

variable "max_events_per_second" {
  description = "BACKFILL_MAX_EVENTS_PER_SECOND: the ceiling of runs that name no maxEventsPerSecond (null: the ramp alone). Operators change a run's ceiling with POST .../{migrationId}/throttle."
  type        = number
  default     = null

  validation {
    condition     = var.max_events_per_second == null ? true : (var.max_events_per_second >= 1 && var.max_events_per_second <= 1000000)
    error_message = "max_events_per_second must be null or between 1 and 1000000."
  }
}

variable "require_reason" {
  description = "BACKFILL_REQUIRE_REASON: whether a live run (a start, a rollback) must say why it is started (reason: a ticket or an incident id); null: true when environment is prod."
  type        = bool
  default     = null
}

variable "require_plan" {
  description = "BACKFILL_REQUIRE_PLAN: whether a live replay, reversal backfill or recovery must name the completed dry run it was reviewed from (planOf); null: true when environment is prod."
  type        = bool
  default     = null
}

variable "approvers" {
  description = "BACKFILL_APPROVERS: operators who approve large live runs (another's, never their own). Empty: no approval."
  type        = list(string)
  default     = []
}

variable "approval_events" {
  description = "BACKFILL_APPROVAL_EVENTS: a live run planned above this many events awaits approval (null: no size threshold)."
  type        = number
  default     = null
}

variable "approval_points" {
  description = "BACKFILL_APPROVAL_POINTS: a live run that may move more points than this (its maxPoints; none counts as more) awaits approval (null: no points threshold)."
  type        = number
  default     = null
}

variable "require_preflight" {
  description = "BACKFILL_REQUIRE_PREFLIGHT: whether a live run whose preflight fails is refused unless forced; null: true when environment is prod."
  type        = bool
  default     = null
}

variable "plan_max_age_hours" {
  description = "BACKFILL_PLAN_MAX_AGE_HOURS: how long after it ended a dry run may be the plan of a live run."
  type        = number
  default     = 24
}

variable "plan_tolerance" {
  description = "BACKFILL_PLAN_TOLERANCE: the share of events (0-1) a range may have gained since its dry run before the live run stops at planning."
  type        = number
  default     = 0

  validation {
    condition     = var.plan_tolerance >= 0 && var.plan_tolerance <= 1
    error_message = "plan_tolerance must be between 0 and 1."
  }
}

variable "max_points" {
  description = "BACKFILL_MAX_POINTS: the points a run may move in all (credits and debits) when it names no maxPoints; a page that would cross it is not written and the run pauses (null: no cap)."
  type        = number
  default     = null

  validation {
    condition     = var.max_points == null ? true : var.max_points >= 1
    error_message = "max_points must be null or at least 1."
  }
}

variable "max_points_per_customer" {
  description = "BACKFILL_MAX_POINTS_PER_CUSTOMER: the points a run may move of one customer when it names no maxPointsPerCustomer (null: no cap)."
  type        = number
  default     = null

  validation {
    condition     = var.max_points_per_customer == null ? true : var.max_points_per_customer >= 1
    error_message = "max_points_per_customer must be null or at least 1."
  }
}

variable "allow_negative_wallets" {
  description = "BACKFILL_ALLOW_NEGATIVE_WALLETS: whether a run that names no allowNegativeWallets may take a wallet below zero (a refund of points already spent); false pauses the run at such a page."
  type        = bool
  default     = true
}

variable "ramp_start_writes" {
  description = "BACKFILL_RAMP_START_WRITES: Firestore's 500/50/5 ramp, the writes per second a run starts at (0 turns the ramp off)."
  type        = number
  default     = 500

  validation {
    condition     = var.ramp_start_writes >= 0 && var.ramp_start_writes <= 1000000
    error_message = "ramp_start_writes must be between 0 and 1000000."
  }
}

variable "ramp_step_minutes" {
  description = "BACKFILL_RAMP_STEP_MINUTES: the ramp grows by half every this many minutes."
  type        = number
  default     = 5

  validation {
    condition     = var.ramp_step_minutes > 0 && var.ramp_step_minutes <= 1440
    error_message = "ramp_step_minutes must be more than 0 and at most 1440."
  }
}

# --- PayNow (webhook_recovery) -----------------------------------------------------------------
# The API key is not a variable (it would land in the plan and the state): it lives in Secret
# Manager (secrets.tf), and the operator adds its value with gcloud. See README.

variable "paynow_api_url" {
  description = "BACKFILL_PAYNOW_API_URL: base URL of PayNow's Management API."
  type        = string
  default     = "https://api.paynow.gg"

  validation {
    condition     = can(regex("^https://[^/?#\\s]+", var.paynow_api_url))
    error_message = "paynow_api_url must be an https URL (the code refuses any other in production)."
  }
}

variable "paynow_store_id" {
  description = "BACKFILL_PAYNOW_STORE_ID: the PayNow store whose webhook history webhook_recovery reads; \"\" (with paynow_webhook_id \"\") means webhook_recovery is not configured and the chunk function gets no API key."
  type        = string
  default     = ""

  validation {
    condition     = length(var.paynow_store_id) <= 64
    error_message = "paynow_store_id must be at most 64 characters."
  }
}

variable "paynow_webhook_id" {
  description = "BACKFILL_PAYNOW_WEBHOOK_ID: the PayNow webhook whose delivery history webhook_recovery reads; set together with paynow_store_id (\"\": not configured)."
  type        = string
  default     = ""

  validation {
    condition     = length(var.paynow_webhook_id) <= 64
    error_message = "paynow_webhook_id must be at most 64 characters."
  }
}

variable "paynow_rate_per_second" {
  description = "BACKFILL_PAYNOW_RATE_PER_SECOND: the API key's rate limit at PayNow, calls per second."
  type        = number
  default     = 5

  validation {
    condition     = var.paynow_rate_per_second > 0 && var.paynow_rate_per_second <= 1000
    error_message = "paynow_rate_per_second must be more than 0 and at most 1000."
  }
}

variable "paynow_burst" {
  description = "BACKFILL_PAYNOW_BURST: the API key's burst at PayNow, calls."
  type        = number
  default     = 5

  validation {
    condition     = var.paynow_burst >= 1 && var.paynow_burst <= 1000 && floor(var.paynow_burst) == var.paynow_burst
    error_message = "paynow_burst must be a whole number between 1 and 1000."
  }
}

variable "paynow_rate_fraction" {
  description = "BACKFILL_PAYNOW_RATE_FRACTION: the share of the key's limit the bundle may use, for every run and chunk together (the live app shares the key)."
  type        = number
  default     = 0.8

  validation {
    condition     = var.paynow_rate_fraction > 0 && var.paynow_rate_fraction <= 1
    error_message = "paynow_rate_fraction is a share of the limit: more than 0, at most 1."
  }
}

variable "paynow_retention_days" {
  description = "BACKFILL_PAYNOW_RETENTION_DAYS: how many days PayNow keeps webhook history."
  type        = number
  default     = 30

  validation {
    condition     = var.paynow_retention_days >= 1 && var.paynow_retention_days <= 3660 && floor(var.paynow_retention_days) == var.paynow_retention_days
    error_message = "paynow_retention_days must be a whole number between 1 and 3660."
  }
}

variable "paynow_timeout_seconds" {
  description = "BACKFILL_PAYNOW_TIMEOUT_SECONDS: timeout of one call to PayNow's API."
  type        = number
  default     = 10

  validation {
    condition     = var.paynow_timeout_seconds > 0 && var.paynow_timeout_seconds <= 120
    error_message = "paynow_timeout_seconds must be more than 0 and at most 120."
  }
}

# --- Queue -------------------------------------------------------------------------------------

variable "task_max_attempts" {
  description = "The queue's retry_config.max_attempts, also passed to the code as BACKFILL_TASK_MAX_ATTEMPTS."
  type        = number
  default     = 10

  validation {
    condition     = var.task_max_attempts >= 1 && var.task_max_attempts <= 100
    error_message = "task_max_attempts must be between 1 and 100: the code needs a finite number to know a task's last attempt."
  }
}

variable "queue_max_concurrent_dispatches" {
  description = "Chunk tasks running at once (rate_limits.max_concurrent_dispatches); bounds the write load on Firestore. Each running chunk of a run takes an equal share of the run's ceiling."
  type        = number
  default     = 20

  validation {
    condition     = var.queue_max_concurrent_dispatches >= 1 && var.queue_max_concurrent_dispatches <= 1000
    error_message = "queue_max_concurrent_dispatches must be between 1 and 1000."
  }
}

variable "queue_max_dispatches_per_second" {
  description = "rate_limits.max_dispatches_per_second of the chunk queue."
  type        = number
  default     = 50
}

# --- Functions ---------------------------------------------------------------------------------

variable "chunk_timeout_seconds" {
  description = "Request timeout of the chunk function; must be >= dispatch_deadline_seconds."
  type        = number
  default     = 600

  validation {
    condition     = var.chunk_timeout_seconds >= 1 && var.chunk_timeout_seconds <= 3600
    error_message = "chunk_timeout_seconds must be between 1 and 3600 (HTTP functions, 2nd gen)."
  }
}

variable "chunk_memory" {
  description = "Memory of the chunk function."
  type        = string
  default     = "1Gi"
}

variable "chunk_max_instances" {
  description = "Max instances of the chunk function; null means queue_max_concurrent_dispatches, so every dispatched task finds an instance."
  type        = number
  default     = null
}

variable "api_timeout_seconds" {
  description = "Request timeout of the trigger, status, control and sweep functions (the trigger plans chunks and enqueues their tasks; resume, retry and the sweep enqueue them again); also the scheduler jobs' attempt deadline (at most 1800)."
  type        = number
  default     = 300
}

variable "api_memory" {
  description = "Memory of the trigger, status, control and sweep functions."
  type        = string
  default     = "512Mi"
}

variable "api_max_instances" {
  description = "Max instances of the trigger, status, control and sweep functions."
  type        = number
  default     = 5
}

# --- Scheduler ---------------------------------------------------------------------------------

variable "scheduler_enabled" {
  description = "Create the nightly Cloud Scheduler job that starts a webhook_replay run over the last two days."
  type        = bool
  default     = false
}

variable "scheduler_schedule" {
  description = "Cron schedule of the nightly job."
  type        = string
  default     = "30 3 * * *"
}

variable "scheduler_time_zone" {
  description = "Time zone of scheduler_schedule."
  type        = string
  default     = "Etc/UTC"
}

# The sweep job is the safety net of active runs, not a feature: keep it on unless something else
# calls the sweep function. scheduler_enabled does not affect it.
variable "sweep_enabled" {
  description = "Create the Cloud Scheduler job that calls the sweep function every sweep_schedule (recovers runs whose watchdog, planning or chunk tasks were lost). Independent of scheduler_enabled."
  type        = bool
  default     = true
}

variable "sweep_schedule" {
  description = "Cron schedule (UTC) of the sweep job."
  type        = string
  default     = "*/5 * * * *"
}

# --- Monitoring --------------------------------------------------------------------------------

variable "page_log_message" {
  description = "Message of the structured log line the chunk handler writes once per committed page; the event metrics read only these lines."
  type        = string
  default     = "page applied"
}

variable "status_log_message" {
  description = "Message of the structured log line written on every change of a run's status (fields status, reason); the circuit breaker and kill switch metrics read only these lines."
  type        = string
  default     = "run status changed"
}

variable "sweep_log_message" {
  description = "Message of the structured log line a sweep writes when it enqueued lost work again (field chunks); the sweep_recoveries metric reads only these lines."
  type        = string
  default     = "sweep picked up lost work"
}

variable "summary_log_message" {
  description = "Message of the one structured log line a run writes as it ends (fields migration_id, type, status, event_count, start_date, end_date, dry_run, processed, errors, error_rate, total, duration_ms); the error-rate and duration metrics read these lines."
  type        = string
  default     = "run summary"
}

variable "failure_log_message" {
  description = "Message of the ERROR line written for each failed event (fields migration_id, chunk_id, event_id, event_type, code, dry_run; never the payload); the failed_events metric reads these lines."
  type        = string
  default     = "event failed"
}

variable "stall_log_message" {
  description = "Message of the line a run's watchdog writes when chunks of the run made no progress for a lease (fields migration_id, chunks); the stalled-runs metric counts these lines."
  type        = string
  default     = "run stalled"
}

variable "error_rate_log_message" {
  description = "Message of the line a live run's watchdog writes, while the run runs, when its share of failed events is above alert_error_rate (fields migration_id, errors, processed, error_rate)."
  type        = string
  default     = "run error rate high"
}

variable "notices_push_endpoint" {
  description = "A chat webhook (HTTPS) to push every run notice to, unwrapped: the message's JSON, whose text field suits Slack-style incoming webhooks; null: no push subscription (subscribe to the topic yourself)."
  type        = string
  default     = null

  validation {
    condition     = var.notices_push_endpoint == null || startswith(coalesce(var.notices_push_endpoint, "x"), "https://")
    error_message = "notices_push_endpoint must be an https:// URL."
  }
}

variable "notices_kms_key" {
  description = "A Cloud KMS key (projects/.../cryptoKeys/...) to encrypt the run-notices topic with; null: Google-managed encryption."
  type        = string
  default     = null
}

variable "alert_error_rate" {
  description = "Alert when a live run ends with more than this share of its events failed (0.01: 1%), and while it runs once its watchdog has seen alert_min_events events of it."
  type        = number
  default     = 0.01

  validation {
    condition     = var.alert_error_rate >= 0 && var.alert_error_rate < 1
    error_message = "alert_error_rate is a share of events: at least 0, below 1."
  }
}

variable "alert_min_events" {
  description = "Events a live run must have taken before its error rate is judged while it runs."
  type        = number
  default     = 100

  validation {
    condition     = var.alert_min_events >= 1
    error_message = "alert_min_events is at least 1."
  }
}

variable "alerting_enabled" {
  description = "Create the alert policies: event errors and error logs, runs stopped by the circuit breaker, runs paused by the kill switch."
  type        = bool
  default     = false
}

variable "alert_notification_channels" {
  description = "Notification channel ids (projects/P/notificationChannels/N) of the alert policies."
  type        = list(string)
  default     = []
}

variable "alert_error_pages_threshold" {
  description = "Alert when more than this many applied pages reported event errors within 10 minutes."
  type        = number
  default     = 0
}
