"""The composition root: builds the services the functions use, once per process.

Tests build their own ``Services`` (for example with an ``InProcessDispatcher``) and install it
with ``use``; production code only ever calls ``services()``.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from google.cloud import firestore
from pydantic import ValidationError

from shared import clock, logs
from shared.adapters import schema
from shared.adapters.cloud_tasks import CloudTasksDispatcher, Dispatcher
from shared.adapters.notices import Announcer
from shared.adapters.stores import Stores
from shared.clock import Clock, SystemClock
from shared.config import Settings, get_settings
from shared.router import TaskRouter
from shared.runs import control, progress, watchdog


@dataclasses.dataclass(frozen=True)
class Services:
    settings: Settings
    db: firestore.Client
    dispatcher: Dispatcher
    clock: Clock = dataclasses.field(default_factory=SystemClock)

    @property
    def stores(self) -> Stores:
        return Stores.firestore(self.db, self.announcer)

    @property
    def announcer(self) -> Announcer:
        """Each status change's notice, published (``shared.adapters.notices``)."""
        return Announcer(self.db, self.settings)

    @property
    def tasks(self) -> TaskRouter:
        return TaskRouter(self.settings, self.db, self.dispatcher, self.stores)

    def describe(self, migration_id: str, chunks_from: int = 0,
                 chunks_per_page: int = progress.DEFAULT_CHUNKS_PER_PAGE) -> dict[str, Any]:
        """One run's status, with the page of its chunks from planning index ``chunks_from``
        (``progress.describe_run``). A stalled run is re-armed on the way (its lost chunks
        picked up, its watchdog enqueued again), so looking at a stuck run is enough to get it
        going, unless the kill switch is off."""
        body = progress.describe_run(self.settings, self.stores, migration_id,
                                     chunks_from=chunks_from, chunks_per_page=chunks_per_page)
        if body.get("stalled") and control.switched_off(self.settings, self.stores) is None:
            body["recovery"] = watchdog.rescue(self.settings, self.stores, self.dispatcher,
                                               migration_id)
        return body

    def sweep(self) -> watchdog.Swept:
        """A watchdog round for every active run; with the kill switch off, every active run
        paused instead, as their next deliveries would pause them."""
        if control.switched_off(self.settings, self.stores) is not None:
            paused = {run.migration_id: control.kill_switch(self.settings, self.stores,
                                                            run.migration_id)
                      for run in self.stores.runs.active()}
            return watchdog.Swept(paused, 0)
        # Runs that waited for one that has ended resume here too, should the ending delivery's
        # call have been lost (``control.make_way``).
        control.wake(self.settings, self.stores, self.dispatcher)
        swept = watchdog.sweep(self.settings, self.stores, self.dispatcher)
        # Notices a dead announcer left unpublished (shared.adapters.notices).
        self.announcer.pending()
        return swept


_lock = threading.Lock()
_services: Services | None = None


def services() -> Services:
    global _services
    with _lock:
        if _services is None:
            settings = get_settings()
            logs.setup(settings.project_id)
            _services = Services(settings, schema.client(settings),
                                 CloudTasksDispatcher(settings))
            clock.use(_services.clock)
        return _services


def check_configuration() -> None:
    """Validate the process's configuration now, at start (the functions call this when they
    are imported): a function with an unsafe or incomplete configuration refuses to start
    instead of answering its first request with a failure. Raises ``RuntimeError`` naming every
    problem (never the values). A no-op once ``use`` installed services (tests)."""
    with _lock:
        if _services is not None:
            return
    try:
        get_settings()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
            for item in error.errors(include_input=False, include_url=False))
        raise RuntimeError(f"refusing to serve: the configuration is invalid: {problems}") \
            from None


def use(replacement: Services | None) -> None:
    """Install ``replacement`` and its clock (None: build from the environment on next use)."""
    global _services
    with _lock:
        _services = replacement
        clock.use(replacement.clock if replacement is not None else SystemClock())
