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

# Single-field index exemptions: fields the bundle writes with values that grow with time (a
# "now" timestamp, a clock reading) and that no query of the bundle filters or orders on alone.
# An indexed field of sequentially increasing values caps its collection at about 500 writes/s
# (every write lands at the same end of the index); an empty index_config drops the field's
# single-field indexes (ascending, descending, array-contains) and leaves composite indexes as
# they are. A map field's exemption covers its subfields. Keep infra/firestore.indexes.json
# ("fieldOverrides") in step with this list; docs/indexes.md says why each field is here and
# why the timestamps left out stay indexed.
locals {
  firestore_field_exemptions = {
    webhook_events_processed_at = { collection = "webhookEvents", field = "processedAt" }

    ledger_entries_created_at = { collection = "ledgerEntries", field = "createdAt" }
    ledger_entries_updated_at = { collection = "ledgerEntries", field = "updatedAt" }

    wallets_updated_at  = { collection = "wallets", field = "updatedAt" }
    wallets_verified_at = { collection = "wallets", field = "verifiedAt" }

    runs_started_at        = { collection = "dataMigrations", field = "startedAt" }
    runs_finished_at       = { collection = "dataMigrations", field = "finishedAt" }
    runs_planned_at        = { collection = "dataMigrations", field = "plannedAt" }
    runs_status_changed_at = { collection = "dataMigrations", field = "statusChangedAt" }
    runs_pitr_timestamp    = { collection = "dataMigrations", field = "pitrTimestamp" }
    runs_received_before   = { collection = "dataMigrations", field = "receivedBefore" }
    runs_status_history    = { collection = "dataMigrations", field = "statusHistory" }
    runs_throttle_history  = { collection = "dataMigrations", field = "throttleHistory" }

    # dataMigrations/{migrationId}/chunks (updatedAt and leaseUntil stay indexed: queried)
    chunks_created_at       = { collection = "chunks", field = "createdAt" }
    chunks_claimed_at       = { collection = "chunks", field = "claimedAt" }
    chunks_started_at       = { collection = "chunks", field = "startedAt" }
    chunks_finished_at      = { collection = "chunks", field = "finishedAt" }
    chunks_state_changed_at = { collection = "chunks", field = "stateChangedAt" }
    chunks_window_start     = { collection = "chunks", field = "windowStart" }
    chunks_window_end       = { collection = "chunks", field = "windowEnd" }
    chunks_cursor           = { collection = "chunks", field = "cursor" }

    # dataMigrations/{migrationId}/errors (at stays indexed: queried)
    run_errors_resolved_at = { collection = "errors", field = "resolvedAt" }

    # dataMigrations/{migrationId}/audits, dryRunLedger, dryRunDocuments
    run_audits_at             = { collection = "audits", field = "at" }
    dry_run_ledger_created_at = { collection = "dryRunLedger", field = "createdAt" }
    dry_run_ledger_updated_at = { collection = "dryRunLedger", field = "updatedAt" }
    dry_run_documents_data    = { collection = "dryRunDocuments", field = "data" }

    # backfillNotices/{noticeId} (shared.adapters.notices)
    notices_at           = { collection = "backfillNotices", field = "at" }
    notices_published_at = { collection = "backfillNotices", field = "publishedAt" }

    # rateLimits/{limitId} (shared.adapters.rate_limit)
    rate_limits_tat        = { collection = "rateLimits", field = "tat" }
    rate_limits_updated_at = { collection = "rateLimits", field = "updatedAt" }
  }
}

# Collection-group single-field indexes (Firestore makes single-field indexes for one collection
# only): a trace reads every run's error records of some events (errors.eventId) and a
# verify's findings about a customer (errors.subject) across runs (shared.adapters.trace_reads).
# The ascending index of the collection stays too. Keep infra/firestore.indexes.json
# ("fieldOverrides" with a COLLECTION_GROUP index) in step with this list.
locals {
  firestore_collection_group_fields = {
    run_errors_event_id = { collection = "errors", field = "eventId" }
    run_errors_subject  = { collection = "errors", field = "subject" }
  }
}

resource "google_firestore_field" "collection_group" {
  for_each = local.firestore_collection_group_fields

  project    = var.project_id
  database   = var.firestore_database
  collection = each.value.collection
  field      = each.value.field

  index_config {
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION"
    }
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION_GROUP"
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_firestore_field" "exempt" {
  for_each = local.firestore_field_exemptions

  project    = var.project_id
  database   = var.firestore_database
  collection = each.value.collection
  field      = each.value.field

  # Empty: no single-field index on this field (composite indexes are not affected).
  index_config {}

  depends_on = [google_project_service.required]
}
