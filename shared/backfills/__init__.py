"""The backfill types. Importing this package registers the built-in ones."""

from shared.backfills import reversal_backfill, webhook_replay  # noqa: F401 (they register)
