# Composite indexes the bundle's queries need. The database itself belongs to the live app and is
# not managed here. Keep infra/firestore.indexes.json (Firebase CLI format) in step with this list.
#
# __name__ is written out as the last field with the direction Firestore would add implicitly:
# the API always returns it, and leaving it out makes Terraform plan to replace the index.

locals {
  firestore_indexes = {
    webhook_events_unprocessed = {
      collection  = "webhookEvents"
      query_scope = "COLLECTION"
      fields = [
        ["processed", "ASCENDING"],
        ["receivedAt", "ASCENDING"],
        ["__name__", "ASCENDING"],
      ]
    }
    webhook_events_by_type = {
      collection  = "webhookEvents"
      query_scope = "COLLECTION"
      fields = [
        ["eventType", "ASCENDING"],
        ["receivedAt", "ASCENDING"],
        ["__name__", "ASCENDING"],
      ]
    }
    webhook_events_unprocessed_by_type = {
      collection  = "webhookEvents"
      query_scope = "COLLECTION"
      fields = [
        ["processed", "ASCENDING"],
        ["eventType", "ASCENDING"],
        ["receivedAt", "ASCENDING"],
        ["__name__", "ASCENDING"],
      ]
    }
    # dataMigrations/{migrationId}/errors: one run's item errors, by code then time.
    run_errors_by_code = {
      collection  = "errors"
      query_scope = "COLLECTION"
      fields = [
        ["code", "ASCENDING"],
        ["at", "ASCENDING"],
        ["__name__", "ASCENDING"],
      ]
    }
    # dataMigrations/{migrationId}/chunks: the watchdog's open chunks whose lease ran out.
    run_chunks_by_lease = {
      collection  = "chunks"
      query_scope = "COLLECTION"
      fields = [
        ["state", "ASCENDING"],
        ["leaseUntil", "ASCENDING"],
        ["__name__", "ASCENDING"],
      ]
    }
    # A rollback's items: the ledger entries one run wrote, and the events it settled without
    # one, newest id first (an order's reversals before its purchase).
    ledger_entries_by_run = {
      collection  = "ledgerEntries"
      query_scope = "COLLECTION"
      fields = [
        ["migrationId", "ASCENDING"],
        ["__name__", "DESCENDING"],
      ]
    }
    webhook_events_settled_by_run = {
      collection  = "webhookEvents"
      query_scope = "COLLECTION"
      fields = [
        ["backfillMigrationId", "ASCENDING"],
        ["backfillOutcome", "ASCENDING"],
        ["__name__", "DESCENDING"],
      ]
    }
    # ledger_verify: a drifted customer's processed purchases (any missing their entry?).
    webhook_events_processed_purchases_by_customer = {
      collection  = "webhookEvents"
      query_scope = "COLLECTION"
      fields = [
        ["eventType", "ASCENDING"],
        ["payload.body.customer.id", "ASCENDING"],
        ["processed", "ASCENDING"],
        ["__name__", "ASCENDING"],
      ]
    }
    runs_by_type = {
      collection  = "dataMigrations"
      query_scope = "COLLECTION"
      fields = [
        ["type", "ASCENDING"],
        ["createdAt", "DESCENDING"],
        ["__name__", "DESCENDING"],
      ]
    }
    runs_by_status = {
      collection  = "dataMigrations"
      query_scope = "COLLECTION"
      fields = [
        ["status", "ASCENDING"],
        ["createdAt", "DESCENDING"],
        ["__name__", "DESCENDING"],
      ]
    }
  }
}

resource "google_firestore_index" "backfill" {
  for_each = local.firestore_indexes

  project     = var.project_id
  database    = var.firestore_database
  collection  = each.value.collection
  query_scope = each.value.query_scope

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value[0]
      order      = fields.value[1]
    }
  }

  depends_on = [google_project_service.required]
}
