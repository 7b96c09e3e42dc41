"""What the preflight asks Firestore's Admin API about the database: whether point-in-time
recovery is on, and which composite indexes exist and are ready.

The emulator has no Admin API (it needs no indexes and keeps no versions): locally every answer
is None, which the preflight reports as not checked. A refused or failed call is None too, with
its error's type (never its text), so a missing role reads as "could not check", not as a pass.
"""

from __future__ import annotations

import dataclasses

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore_admin_v1
from google.cloud.firestore_admin_v1.types import Database

from shared.config import Settings

# The composite indexes the bundle's queries need: infra/firestore.indexes.json holds the same
# (tests/unit/test_indexes.py compares them), as (collection group, fields in order).
COMPOSITE_INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("webhookEvents", ("processed", "receivedAt")),
    ("webhookEvents", ("eventType", "receivedAt")),
    ("webhookEvents", ("processed", "eventType", "receivedAt")),
    ("errors", ("code", "at")),
    ("chunks", ("state", "leaseUntil")),
    ("ledgerEntries", ("migrationId", "__name__")),
    ("webhookEvents", ("backfillMigrationId", "backfillOutcome", "__name__")),
    ("webhookEvents", ("eventType", "payload.body.customer.id", "processed")),
    ("dataMigrations", ("type", "createdAt")),
    ("dataMigrations", ("status", "createdAt")),
)


@dataclasses.dataclass(frozen=True)
class Answer:
    """An Admin API answer, or why there is none (``unchecked``)."""

    value: object = None
    unchecked: str = ""


class FirestoreAdmin:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._database = f"projects/{settings.project_id}/databases/{settings.database}"

    def _client(self) -> firestore_admin_v1.FirestoreAdminClient:
        return firestore_admin_v1.FirestoreAdminClient()

    def pitr(self) -> Answer:
        """Whether point-in-time recovery is enabled (``Answer.value``: True or False)."""
        if self._settings.firestore_emulator_host:
            return Answer(unchecked="the Firestore emulator keeps no versions")
        try:
            database = self._client().get_database(name=self._database, timeout=10)
        except api_exceptions.GoogleAPICallError as error:
            return Answer(unchecked=f"the Admin API answered {type(error).__name__}")
        enabled = Database.PointInTimeRecoveryEnablement.POINT_IN_TIME_RECOVERY_ENABLED
        return Answer(database.point_in_time_recovery_enablement == enabled)

    def indexes(self) -> Answer:
        """The composite indexes of ``COMPOSITE_INDEXES`` missing or not ready (``value``: a
        list of "collection (fields): state")."""
        if self._settings.firestore_emulator_host:
            return Answer(unchecked="the Firestore emulator needs no indexes")
        found: dict[tuple[str, tuple[str, ...]], str] = {}
        try:
            for group in sorted({group for group, _ in COMPOSITE_INDEXES}):
                parent = f"{self._database}/collectionGroups/{group}"
                for index in self._client().list_indexes(parent=parent, timeout=10):
                    fields = _bare(tuple(field.field_path for field in index.fields))
                    found[(group, fields)] = index.state.name
        except api_exceptions.GoogleAPICallError as error:
            return Answer(unchecked=f"the Admin API answered {type(error).__name__}")
        problems = [f"{group} ({', '.join(fields)}): {state}"
                    for group, fields in COMPOSITE_INDEXES
                    if (state := found.get((group, _bare(fields)), "missing")) != "READY"]
        return Answer(problems)


def _bare(fields: tuple[str, ...]) -> tuple[str, ...]:
    """An index's fields without the document name it ends with (the API lists it always)."""
    return fields[:-1] if fields and fields[-1] == "__name__" else fields
