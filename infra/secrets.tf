# The PayNow Management API key that webhook_recovery reads (from the chunk function only).
# Terraform creates the secret, never a version of it: a google_secret_manager_secret_version
# would put the key in the state in clear text. The operator adds the value with
#   printf '%s' "$KEY" | gcloud secrets versions add <name_prefix>-paynow-api-key --data-file=-
# (README "PayNow API key (webhook_recovery)"). Only the chunk SA may read it (iam.tf).
resource "google_secret_manager_secret" "paynow_api_key" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-paynow-api-key"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}
