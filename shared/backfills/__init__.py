"""The backfill types. Importing this package registers the built-in ones."""

from shared.backfills import (  # noqa: F401 (they register)
    ledger_verify,
    reversal_backfill,
    rollback,
    webhook_recovery,
    webhook_replay,
)
