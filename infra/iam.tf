# Four identities, each with only what its job needs:
#   runtime   - what the trigger, status, control and sweep functions run as: Firestore, enqueue
#               chunk tasks, logs.
#   chunk     - what the chunk function runs as: the same, plus read access to the PayNow API key
#               (secrets.tf), which only the chunk function uses (webhook_recovery).
#   tasks     - what Cloud Tasks calls the chunk function as (OIDC token on every chunk task).
#   scheduler - what Cloud Scheduler calls the trigger and sweep functions as (OIDC token);
#               nothing else.
# Operators are people (or automation accounts) who may call the trigger, status, control and
# sweep functions. The scheduler may start runs and sweep them but never pause, resume, cancel or
# retry them.
# Every function is IAM-gated (no allUsers) and the code also verifies each OIDC token itself:
# issuer, audience (the function URL) and that the caller is the identity allowed for it.

resource "google_service_account" "runtime" {
  account_id   = "${var.name_prefix}-runtime"
  display_name = "Backfill functions runtime"
  description  = "Runs the backfill trigger, chunk, status, control and sweep functions."

  depends_on = [google_project_service.required]
}

resource "google_service_account" "chunk" {
  account_id   = "${var.name_prefix}-chunk"
  display_name = "Backfill chunk function runtime"
  description  = "Runs the backfill chunk function; the only reader of the PayNow API key."

  depends_on = [google_project_service.required]
}

resource "google_service_account" "tasks" {
  account_id   = "${var.name_prefix}-tasks"
  display_name = "Backfill chunk task invoker"
  description  = "Identity of the OIDC token on backfill chunk tasks; may invoke only the chunk function."

  depends_on = [google_project_service.required]
}

resource "google_service_account" "scheduler" {
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "Backfill scheduler invoker"
  description  = "Identity of the Cloud Scheduler jobs (nightly replay, sweep); may invoke only the trigger and sweep functions."

  depends_on = [google_project_service.required]
}

# --- runtime -----------------------------------------------------------------------------------
# The sweep function needs nothing beyond these: it reads and writes runs and chunks (datastore),
# asks whether a chunk's or planning task still exists (viewer), and creates chunk, planning and
# watchdog tasks on the chunk queue with the tasks SA's token (enqueuer, actAs), exactly what a
# watchdog delivery of the chunk function does under the chunk SA (which has the same grants).

resource "google_project_iam_member" "runtime" {
  for_each = toset([
    "roles/datastore.user",
    "roles/logging.logWriter",
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.runtime.email}"
}

# Enqueue rights on the chunk queue only, not on every queue of the project.
resource "google_cloud_tasks_queue_iam_member" "runtime_enqueuer" {
  project  = var.project_id
  location = google_cloud_tasks_queue.chunks.location
  name     = google_cloud_tasks_queue.chunks.name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.runtime.email}"
}

# The run watchdog asks whether a chunk's task still exists (GetTask: cloudtasks.tasks.get, not
# part of the enqueuer role) before it picks the chunk up again; read rights on this queue only.
resource "google_cloud_tasks_queue_iam_member" "runtime_viewer" {
  project  = var.project_id
  location = google_cloud_tasks_queue.chunks.location
  name     = google_cloud_tasks_queue.chunks.name
  role     = "roles/cloudtasks.viewer"
  member   = "serviceAccount:${google_service_account.runtime.email}"
}

# Creating a task that carries an OIDC token of the tasks service account requires
# iam.serviceAccounts.actAs on that account.
resource "google_service_account_iam_member" "runtime_acts_as_tasks" {
  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.runtime.email}"
}

# --- chunk -------------------------------------------------------------------------------------
# Exactly the runtime SA's grants: a chunk task reads and writes runs, chunks and the ledger
# (datastore), enqueues its own continuations and the run's planning and watchdog tasks with the
# tasks SA's token (enqueuer, actAs), and a watchdog delivery asks whether a chunk's task still
# exists (viewer). Plus, on one secret only, the PayNow API key (webhook_recovery).

resource "google_project_iam_member" "chunk" {
  for_each = toset([
    "roles/datastore.user",
    "roles/logging.logWriter",
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.chunk.email}"
}

resource "google_cloud_tasks_queue_iam_member" "chunk_enqueuer" {
  project  = var.project_id
  location = google_cloud_tasks_queue.chunks.location
  name     = google_cloud_tasks_queue.chunks.name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.chunk.email}"
}

resource "google_cloud_tasks_queue_iam_member" "chunk_viewer" {
  project  = var.project_id
  location = google_cloud_tasks_queue.chunks.location
  name     = google_cloud_tasks_queue.chunks.name
  role     = "roles/cloudtasks.viewer"
  member   = "serviceAccount:${google_service_account.chunk.email}"
}

resource "google_service_account_iam_member" "chunk_acts_as_tasks" {
  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.chunk.email}"
}

# The PayNow API key: read access on this one secret, for the chunk SA only (no project-level
# Secret Manager role anywhere). Cloud Run checks this grant when it deploys the chunk function.
resource "google_secret_manager_secret_iam_member" "chunk_reads_paynow_api_key" {
  project   = google_secret_manager_secret.paynow_api_key.project
  secret_id = google_secret_manager_secret.paynow_api_key.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.chunk.email}"
}

# --- invokers (a 2nd-gen function is a Cloud Run service of the same name) ----------------------

resource "google_cloud_run_v2_service_iam_member" "tasks_invokes_chunk" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.backfill["chunk"].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.tasks.email}"
}

resource "google_cloud_run_v2_service_iam_member" "scheduler_invokes_trigger" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.backfill["trigger"].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

# The sweep job's identity (scheduler.tf). The sweep only enqueues what an active run has lost, so
# an automated caller needs it; the code accepts the scheduler SA on the sweep as on the trigger.
resource "google_cloud_run_v2_service_iam_member" "scheduler_invokes_sweep" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.backfill["sweep"].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler.email}"
}

# Operators may also run a sweep by hand (e.g. right after the chunk function was down).
resource "google_cloud_run_v2_service_iam_member" "operators" {
  for_each = {
    for pair in setproduct(["trigger", "status", "control", "sweep"], local.operator_members) :
    "${pair[0]} ${pair[1]}" => { function = pair[0], member = pair[1] }
  }

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.backfill[each.value.function].name
  role     = "roles/run.invoker"
  member   = each.value.member
}

# Viewers read: the status function alone (its every route is a read).
resource "google_cloud_run_v2_service_iam_member" "viewers" {
  for_each = toset(local.viewer_members)

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.backfill["status"].name
  role     = "roles/run.invoker"
  member   = each.value
}
