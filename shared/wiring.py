"""The composition root: builds the services the functions use, once per process.

Tests build their own ``Services`` (for example with an ``InProcessDispatcher``) and install it
with ``use``; production code only ever calls ``services()``.
"""

from __future__ import annotations

import dataclasses
import threading

from google.cloud import firestore

from shared import logs, store
from shared.chunks import ChunkRunner
from shared.config import Settings, get_settings
from shared.dispatch import CloudTasksDispatcher, Dispatcher


@dataclasses.dataclass(frozen=True)
class Services:
    settings: Settings
    db: firestore.Client
    dispatcher: Dispatcher

    @property
    def chunks(self) -> ChunkRunner:
        return ChunkRunner(self.settings, self.db, self.dispatcher)


_lock = threading.Lock()
_services: Services | None = None


def services() -> Services:
    global _services
    with _lock:
        if _services is None:
            settings = get_settings()
            logs.setup(settings.project_id)
            _services = Services(settings, store.client(settings),
                                 CloudTasksDispatcher(settings))
        return _services


def use(replacement: Services | None) -> None:
    """Install ``replacement`` (None: build from the environment on next use)."""
    global _services
    with _lock:
        _services = replacement
