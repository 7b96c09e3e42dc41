# Run notices (shared.adapters.notices, docs/notifications.md): every status change of a run
# (started, waiting, paused and why, stalled, awaiting approval, completed, failed, cancelled,
# rolled back, a live run's error rate while it runs) is published once to this topic as JSON.
# The functions that change a run's status publish (the runtime and chunk identities: control,
# trigger, status rescues, sweep, and the chunk handler); nobody else may.

resource "google_pubsub_topic" "notices" {
  project = var.project_id
  name    = "${var.name_prefix}-run-notices"

  # A subscriber that was down reads a week of notices on its return.
  message_retention_duration = "604800s"
  kms_key_name               = var.notices_kms_key

  depends_on = [google_project_service.required]
}

resource "google_pubsub_topic_iam_member" "publishers" {
  for_each = {
    runtime = google_service_account.runtime.email
    chunk   = google_service_account.chunk.email
  }

  project = var.project_id
  topic   = google_pubsub_topic.notices.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${each.value}"
}

# Optional: push each notice to a chat webhook, unwrapped (the body is the message's JSON; its
# `text` field is what a Slack-style incoming webhook shows).
resource "google_pubsub_subscription" "chat" {
  count = var.notices_push_endpoint == null ? 0 : 1

  project = var.project_id
  name    = "${var.name_prefix}-run-notices-chat"
  topic   = google_pubsub_topic.notices.id

  ack_deadline_seconds       = 20
  message_retention_duration = "86400s"

  push_config {
    push_endpoint = var.notices_push_endpoint
    no_wrapper {
      write_metadata = false
    }
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
}
