output "trigger_url" {
  description = "URL of the trigger function (POST a run request; token audience)."
  value       = local.function_urls.trigger
}

output "chunk_url" {
  description = "URL of the chunk function (Cloud Tasks target; token audience)."
  value       = local.function_urls.chunk
}

output "status_url" {
  description = "URL of the status function (GET; token audience)."
  value       = local.function_urls.status
}

output "control_url" {
  description = "URL of the run control function (POST <url>/api/admin/dataMigrations/{migrationId}/{pause|resume|cancel|retry|throttle|rollback}; token audience = this URL)."
  value       = local.function_urls.control
}

output "sweep_url" {
  description = "URL of the sweep function (POST <url>/api/jobs/sweep with {}; token audience = this URL). Cloud Scheduler calls it every sweep_schedule; operators may too."
  value       = local.function_urls.sweep
}

output "function_service_uris" {
  description = "The URIs the Functions API reports (service_config[0].uri); the same services as the *_url outputs, possibly under the hash-based host name."
  value       = { for key, function in google_cloudfunctions2_function.backfill : key => function.service_config[0].uri }
}

output "queue_name" {
  description = "Full name of the chunk queue."
  value       = google_cloud_tasks_queue.chunks.id
}

output "queue_id" {
  description = "Short id of the chunk queue (BACKFILL_TASKS_QUEUE)."
  value       = google_cloud_tasks_queue.chunks.name
}

output "runtime_service_account" {
  description = "Email of the runtime service account of the trigger, status, control and sweep functions."
  value       = google_service_account.runtime.email
}

output "chunk_service_account" {
  description = "Email of the chunk function's service account (the only reader of the PayNow API key)."
  value       = google_service_account.chunk.email
}

output "paynow_api_key_secret" {
  description = "Secret Manager secret id of the PayNow API key: add its value with gcloud secrets versions add (README)."
  value       = google_secret_manager_secret.paynow_api_key.secret_id
}

output "tasks_service_account" {
  description = "Email of the service account on chunk task OIDC tokens (BACKFILL_TASKS_IDENTITY)."
  value       = google_service_account.tasks.email
}

output "scheduler_service_account" {
  description = "Email of the Cloud Scheduler service account (BACKFILL_SCHEDULER_IDENTITY)."
  value       = google_service_account.scheduler.email
}

output "function_environment" {
  description = "The environment every function runs with (no secrets in it); the chunk function's is chunk_environment."
  value       = local.function_environment
}

output "chunk_environment" {
  description = "The chunk function's environment: function_environment plus, once webhook_recovery is configured, BACKFILL_PAYNOW_API_KEY_FILE (the path of its PayNow API key file, not the key)."
  value       = local.chunk_environment
}
