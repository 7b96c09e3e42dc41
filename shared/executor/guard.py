"""Money guardrails: a page that would cross one of its run's caps is not committed.

A run may carry ``maxPoints`` (the points it may move in all: the sum over its pages of each
wallet's change, credits and debits alike), ``maxPointsPerCustomer`` (the same, for one
customer) and ``allowNegativeWallets: false`` (no page may take a wallet from zero or more to
below zero). ``Guard.check`` runs on each planned page, before anything of it is written; a
page that would cross a cap raises ``Crossed`` and the delivery pauses its run with the reason
(``shared.executor.runner``). ``resume`` with a raised cap, or ``force``, goes on from the same
page.

Why a cap holds across concurrent chunks without one hot document written by every page:

- ``maxPoints`` is escrowed. The run's pool (``dataMigrations/{id}/guard/points``) counts the
  points ``reserved``; a chunk holds an ``allowance`` it reserved and spends it page by page,
  written in the page's own commit under the chunk's lease. A page that needs more reserves it
  in that same commit, under the pool's update time: if another chunk reserved meanwhile, the
  whole page fails and is planned again. So the points moved never exceed what was reserved,
  and the reserved never exceed the cap. A chunk gives back what it did not spend with its
  last page, and ``ChunkStore.release`` takes the allowances of stopped chunks back, so after
  a pause the pool counts exactly the points moved.
- ``maxPointsPerCustomer`` counts each customer's points in ``dataMigrations/{id}/
  customerPoints/{customerId}``, written in the page's commit under the update time read (or
  created, if absent): two chunks moving one customer's wallet at once cannot both pass.

A repeat of a page is safe: the counts move only in the commit that moves the wallets, and a
commit that failed moved neither.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from google.cloud import firestore

from shared.adapters import schema
from shared.config import Settings
from shared.domain.records import RunRecord


@dataclasses.dataclass(frozen=True)
class Caps:
    """A run's guardrails (None: no cap)."""

    max_points: int | None = None
    max_points_per_customer: int | None = None
    allow_negative_wallets: bool = True

    @classmethod
    def of(cls, run: RunRecord) -> Caps:
        return cls(run.max_points, run.max_points_per_customer, run.allow_negative_wallets)

    @property
    def any(self) -> bool:
        return (self.max_points is not None or self.max_points_per_customer is not None
                or not self.allow_negative_wallets)


class Crossed(Exception):
    """The page would cross a cap: nothing of it was written. ``reason`` says which cap, the
    points so far and the customer; ``cap`` names the field (``maxPoints``, ...)."""

    def __init__(self, cap: str, reason: str, moved: int = 0) -> None:
        super().__init__(reason)
        self.cap = cap
        self.reason = reason
        self.moved = moved  # the page's points (maxPoints: what it would move)


def moved_by(deltas: dict[str, int]) -> int:
    """The points a page moves: each wallet's change, credits and debits alike."""
    return sum(abs(delta) for delta in deltas.values())


class Guard:
    """The caps of one delivery's run, checked on each page before it is written."""

    def __init__(self, settings: Settings, db: firestore.Client, run: RunRecord,
                 chunk_id: str) -> None:
        self._settings = settings
        self._db = db
        self._run = run
        self._chunk_id = chunk_id
        self.caps = Caps.of(run)

    def check(self, batch: firestore.WriteBatch, allowance: int, deltas: dict[str, int],
              below_zero: list[str], final: bool) -> dict[str, Any]:
        """Raise ``Crossed`` if the page (its wallets' ``deltas``, the wallets it takes
        ``below_zero``) would cross a cap; else add the guard's writes to ``batch`` and answer
        the chunk fields its commit writes (its new ``allowance``; the chunk held
        ``allowance`` before the page)."""
        caps = self.caps
        if not caps.any:
            return {}
        if not caps.allow_negative_wallets and below_zero:
            raise Crossed("allowNegativeWallets", (
                f"guardrail allowNegativeWallets=false: the next page of chunk "
                f"{self._chunk_id} would take the wallet of customer {below_zero[0]} below "
                f"zero{self._others(below_zero)}. Nothing of that page was written; resume "
                "with allowNegativeWallets true (or force) to go on"))
        if caps.max_points_per_customer is not None:
            self._per_customer(batch, caps.max_points_per_customer, deltas)
        if caps.max_points is None:
            return {}
        return {"allowance": self._spend(batch, caps.max_points, allowance, moved_by(deltas),
                                         final)}

    def _others(self, customers: list[str]) -> str:
        return f" (and {len(customers) - 1} more)" if len(customers) > 1 else ""

    def _per_customer(self, batch: firestore.WriteBatch, cap: int,
                      deltas: dict[str, int]) -> None:
        moved = {customer: abs(delta) for customer, delta in deltas.items() if delta}
        refs = [schema.customer_points_ref(self._db, self._run.migration_id, customer)
                for customer in sorted(moved)]
        snaps = {snap.id: snap for snap in self._db.get_all(refs)}
        for ref in refs:
            snap = snaps[ref.id]
            so_far = int((snap.to_dict() or {}).get("points", 0)) if snap.exists else 0
            if so_far + moved[ref.id] > cap:
                raise Crossed("maxPointsPerCustomer", (
                    f"guardrail maxPointsPerCustomer={cap}: this run moved {so_far} points of "
                    f"customer {ref.id} so far, and the next page of chunk {self._chunk_id} "
                    f"would move {moved[ref.id]} more. Nothing of that page was written; "
                    "resume with a higher maxPointsPerCustomer (or force) to go on"),
                    moved[ref.id])
            if snap.exists:
                batch.update(ref, {"points": so_far + moved[ref.id]},
                             option=self._db.write_option(last_update_time=snap.update_time))
            else:
                batch.create(ref, {"points": moved[ref.id], "customerId": ref.id})

    def _spend(self, batch: firestore.WriteBatch, cap: int, allowance: int, moved: int,
               final: bool) -> int:
        """The chunk's allowance after the page: spent from what it holds, topped up from
        the run's pool under its update time when short; what is left goes back with the
        chunk's last page."""
        ref = schema.pool_ref(self._db, self._run.migration_id)
        if moved <= allowance:
            left = allowance - moved
            if final and left:
                batch.set(ref, {"reserved": firestore.Increment(-left)}, merge=True)
                return 0
            return left
        need = moved - allowance
        snap = ref.get()
        reserved = int((snap.to_dict() or {}).get("reserved", 0)) if snap.exists else 0
        if reserved + need > cap:
            raise Crossed("maxPoints", (
                f"guardrail maxPoints={cap}: {reserved} points are moved or reserved by this "
                f"run's chunks, and the next page of chunk {self._chunk_id} would move "
                f"{moved} more. Nothing of that page was written; resume with a higher "
                "maxPoints (or force) to go on"), moved)
        # Reserve what this page needs and a share of what is left, so that most pages of a
        # chunk spend what it holds; the share shrinks as the pool empties, so the points held
        # unspent by running chunks stay a small part of what remains.
        grant = need if final else need + (cap - reserved - need) // (
            4 * self._settings.queue_concurrency)
        if snap.exists:
            batch.update(ref, {"reserved": reserved + grant},
                         option=self._db.write_option(last_update_time=snap.update_time))
        else:
            batch.create(ref, {"reserved": grant})
        return allowance + grant - moved
