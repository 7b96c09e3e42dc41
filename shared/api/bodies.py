"""The requests the functions take: the trigger's body, and the bodies of run control.

Each is validated with pydantic; ``InvalidRequest`` names the first field that is wrong and
why, and lists them all. A backfill ``type`` is checked against the registry of backfill types,
as are the options only some types take.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.backfills.registry import BACKFILLS
from shared.domain.run_request import BackfillRequest
from shared.errors import InvalidRequest
from shared.models import DocumentId

# A customer, order or event id a targeted run names; at most this many of each, so a run
# document stays far below Firestore's 1 MiB.
TargetId = Annotated[DocumentId, Field(max_length=256)]
MAX_TARGET_IDS = 500


class _TriggerBody(BaseModel):
    """The trigger's JSON body as sent: a range by dates, or by ``lookbackDays`` from today."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: str = Field(max_length=64)
    start_date: dt.date | None = Field(None, alias="startDate")
    end_date: dt.date | None = Field(None, alias="endDate")
    lookback_days: int | None = Field(None, alias="lookbackDays", gt=0)
    # A dry run unless the caller says ``"dryRun": false``: live is never the silent default
    # (the CLI and a rollback default to a dry run too).
    dry_run: bool = Field(True, alias="dryRun")
    max_events: int | None = Field(None, alias="maxEvents", gt=0, le=10_000_000)
    max_events_per_second: int | None = Field(None, alias="maxEventsPerSecond", gt=0,
                                              le=1_000_000)
    max_points: int | None = Field(None, alias="maxPoints", gt=0)
    max_points_per_customer: int | None = Field(None, alias="maxPointsPerCustomer", gt=0)
    allow_negative_wallets: bool | None = Field(None, alias="allowNegativeWallets")
    plan_of: str | None = Field(None, alias="planOf", min_length=1, max_length=200,
                                pattern=r"^[A-Za-z0-9_-]+$")
    force: bool = False
    # Why it is started: a ticket or an incident id (required for a live run in production).
    reason: str = Field("", max_length=500)
    include_processed: bool = Field(False, alias="includeProcessed")
    repair: bool = False
    event_types: list[str] | None = Field(None, alias="eventTypes", min_length=1, max_length=8)
    customer_ids: list[TargetId] | None = Field(None, alias="customerIds", min_length=1,
                                                max_length=MAX_TARGET_IDS)
    order_ids: list[TargetId] | None = Field(None, alias="orderIds", min_length=1,
                                             max_length=MAX_TARGET_IDS)
    event_ids: list[TargetId] | None = Field(None, alias="eventIds", min_length=1,
                                             max_length=MAX_TARGET_IDS)

    @property
    def target(self) -> dict[str, list[str]] | None:
        """The run's target as runs record it (sorted, without repeats), or None."""
        return _recorded(("eventTypes", self.event_types), ("customerIds", self.customer_ids),
                         ("orderIds", self.order_ids), ("eventIds", self.event_ids))

    @model_validator(mode="after")
    def _one_kind_of_range(self) -> _TriggerBody:
        dated = self.start_date is not None or self.end_date is not None
        if self.lookback_days is not None and dated:
            raise ValueError("lookbackDays: give either lookbackDays or startDate and endDate, "
                             "not both")
        if self.lookback_days is None:
            for name, value in (("startDate", self.start_date), ("endDate", self.end_date)):
                if value is None:
                    raise ValueError(f"{name}: Field required (or give lookbackDays instead of "
                                     "startDate and endDate)")
            assert self.start_date is not None
            assert self.end_date is not None
            if self.start_date > self.end_date:
                raise ValueError("endDate: must be on or after startDate")
        if self.plan_of is not None and self.dry_run:
            raise ValueError("planOf: names the dry run a live run was reviewed from; give "
                             "it with dryRun: false")
        if self.type not in BACKFILLS.triggered():
            raise ValueError(f"type: Input should be one of: {', '.join(BACKFILLS.triggered())}"
                             + (" (rollback runs start through POST .../{migrationId}/rollback)"
                                if BACKFILLS.internal(self.type) else ""))
        backfill = BACKFILLS.get(self.type)
        given = {"includeProcessed": self.include_processed, "repair": self.repair,
                 **(self.target or {})}
        for option, wanted in given.items():
            if wanted and option not in backfill.options:
                takers = [name for name in BACKFILLS.triggered()
                          if option in BACKFILLS.get(name).options]
                raise ValueError(f"{option}: only {', '.join(takers) or 'no type'} takes it "
                                 f"({self.type} does not)")
        for event_type in self.event_types or ():
            if event_type not in backfill.event_types:
                raise ValueError(f"eventTypes: {self.type} applies only "
                                 f"{', '.join(backfill.event_types)}, not {event_type!r}")
        return self


def parse_request(raw: bytes, max_range_days: int, today: dt.date) -> BackfillRequest:
    """Parse and validate a trigger body; raise ``InvalidRequest`` naming the field and reason.

    ``lookbackDays: n`` is the n UTC days ending today: 2 is yesterday and today.
    """
    if not raw.strip():
        raise InvalidRequest("body", "a JSON object is required")
    raw, requested_end = _month_end(raw)
    body = parse_json(raw, _TriggerBody)
    if body.lookback_days is not None:
        if body.lookback_days > max_range_days:
            raise InvalidRequest("lookbackDays", f"at most {max_range_days} days per run")
        start, end = today - dt.timedelta(days=body.lookback_days - 1), today
    else:
        assert body.start_date is not None
        assert body.end_date is not None
        start, end = body.start_date, body.end_date
    request = BackfillRequest(type=body.type, start_date=start, end_date=end,
                              dry_run=body.dry_run, max_events=body.max_events,
                              max_events_per_second=body.max_events_per_second,
                              lookback_days=body.lookback_days, force=body.force,
                              max_points=body.max_points, plan_of=body.plan_of,
                              max_points_per_customer=body.max_points_per_customer,
                              allow_negative_wallets=body.allow_negative_wallets,
                              include_processed=body.include_processed,
                              repair=body.repair, target=body.target,
                              requested_end_date=requested_end, reason=body.reason.strip())
    if request.days > max_range_days:
        raise InvalidRequest(
            "endDate", f"the range spans {request.days} days; at most {max_range_days} per run"
        )
    if request.start_date > today:
        raise InvalidRequest("startDate", f"is in the future (today is {today.isoformat()} UTC)")
    return request


_DAY = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


def _month_end(raw: bytes) -> tuple[bytes, str | None]:
    """Take an ``endDate`` past its month's end (``2024-11-31``) as that month's last day.

    Scripts loop over months with a fixed ``-31``; as an end date it can only mean "to the end
    of the month". Answers the body to validate and the ``endDate`` as sent when it was moved.
    A ``startDate`` past its month's end gets a 400 saying how to write it.
    """
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return raw, None  # parse_json says what is wrong with it
    if not isinstance(body, dict):
        return raw, None
    start = body.get("startDate")
    if isinstance(start, str) and (last := _past_month_end(start)) is not None:
        following = last + dt.timedelta(days=1)
        raise InvalidRequest("startDate", f"{start} is past the end of {start[:7]}: start on "
                                          f"{last.isoformat()} or {following.isoformat()}")
    end = body.get("endDate")
    if not isinstance(end, str) or (last := _past_month_end(end)) is None:
        return raw, None
    return json.dumps({**body, "endDate": last.isoformat()}).encode(), end


def _past_month_end(value: str) -> dt.date | None:
    """The last day of the month when ``value`` is a day 29-31 past it, else None."""
    match = _DAY.fullmatch(value)
    if match is None:
        return None
    year, month, day = (int(part) for part in match.groups())
    if not 1 <= month <= 12 or not 29 <= day <= 31 or year < 1:
        return None
    last = calendar.monthrange(year, month)[1]
    return dt.date(year, month, last) if day > last else None


class ControlRequest(BaseModel):
    """The body of pause, resume and cancel (optional): the operator's reason, kept in the
    run's status history."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    reason: str = Field("", max_length=500)


class ResumeRequest(ControlRequest):
    """The body of resume (optional): new guardrails for the rest of the run (a raised cap
    after a guardrail paused it), or ``force`` to lift them all."""

    max_points: int | None = Field(None, alias="maxPoints", gt=0)
    max_points_per_customer: int | None = Field(None, alias="maxPointsPerCustomer", gt=0)
    allow_negative_wallets: bool | None = Field(None, alias="allowNegativeWallets")
    force: bool = False

    @model_validator(mode="after")
    def _force_alone(self) -> ResumeRequest:
        if self.force and self.caps(lifted=False):
            raise ValueError("force: lifts every guardrail; give it without maxPoints, "
                             "maxPointsPerCustomer or allowNegativeWallets")
        return self

    def caps(self, lifted: bool = True) -> dict[str, Any]:
        """The run document fields the resume changes (``force``: every guardrail lifted)."""
        if self.force and lifted:
            return {"maxPoints": None, "maxPointsPerCustomer": None,
                    "allowNegativeWallets": True}
        return {name: value for name, value in (
            ("maxPoints", self.max_points), ("maxPointsPerCustomer", self.max_points_per_customer),
            ("allowNegativeWallets", self.allow_negative_wallets)) if value is not None}


class SwitchRequest(BaseModel):
    """The body of ``POST /api/admin/switch``: on or off, and why (required to switch off)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enabled: bool
    reason: str = Field("", max_length=500)

    @model_validator(mode="after")
    def _reason_to_switch_off(self) -> SwitchRequest:
        if not self.enabled and not self.reason.strip():
            raise ValueError("reason: say why backfills are switched off (it is shown to "
                             "everyone they refuse)")
        return self


class SteerAllRequest(ControlRequest):
    """The body of pause, resume or cancel of many runs: ``all``, or a filter by ``type`` and
    by dates (the runs overlapping ``startDate``..``endDate``)."""

    all: bool = False
    type: str | None = Field(None, max_length=64)
    start_date: dt.date | None = Field(None, alias="startDate")
    end_date: dt.date | None = Field(None, alias="endDate")

    @model_validator(mode="after")
    def _some_filter(self) -> SteerAllRequest:
        filtered = self.type is not None or self.start_date is not None \
            or self.end_date is not None
        if self.all and filtered:
            raise ValueError("all: give all, or a type and dates, not both")
        if not self.all and not filtered:
            raise ValueError("all: give all: true, or a type or dates, to say which runs")
        if self.start_date and self.end_date and self.start_date > self.end_date:
            raise ValueError("endDate: must be on or after startDate")
        if self.type is not None and self.type not in BACKFILLS.names():
            raise ValueError(f"type: Input should be one of: {', '.join(BACKFILLS.names())}")
        return self


class RetryRequest(ControlRequest):
    """The body of retry (optional): only the failures of one ``code``; ``dryRun`` (default:
    as the run retried); ``force`` past the concurrency limit and overlapping runs."""

    code: str | None = Field(None, pattern=r"^[a-z_]{1,64}$")
    dry_run: bool | None = Field(None, alias="dryRun")
    force: bool = False


class RollbackRequest(ControlRequest):
    """The body of rollback (optional): ``dryRun`` (default true: a live rollback needs a
    completed dry run of the same scope first, unless ``force``); ``customerIds`` and
    ``orderIds`` roll back only those customers' or orders' entries (both: an entry must match
    both), leaving every other entry, wallet and flag as it was."""

    dry_run: bool = Field(True, alias="dryRun")
    force: bool = False
    customer_ids: list[TargetId] | None = Field(None, alias="customerIds", min_length=1,
                                                max_length=MAX_TARGET_IDS)
    order_ids: list[TargetId] | None = Field(None, alias="orderIds", min_length=1,
                                             max_length=MAX_TARGET_IDS)

    @property
    def target(self) -> dict[str, list[str]] | None:
        """The rollback's scope as runs record it (sorted, without repeats), or None: all."""
        return _recorded(("customerIds", self.customer_ids), ("orderIds", self.order_ids))


def _recorded(*fields: tuple[str, list[str] | None]) -> dict[str, list[str]] | None:
    """A target as runs record it: each field given, sorted and without repeats; None if none."""
    target = {name: sorted(set(values)) for name, values in fields if values}
    return target or None


class ThrottleRequest(BaseModel):
    """The body of throttle: the run's new ceiling in events per second, or null to lift the
    operator's ceiling (the ramp still holds)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    max_events_per_second: int | None = Field(alias="maxEventsPerSecond", gt=0, le=1_000_000)
    reason: str = Field("", max_length=500)


RequestT = TypeVar("RequestT", bound=BaseModel)


def parse_json(raw: bytes, model: type[RequestT]) -> RequestT:
    """Validate a JSON body (empty: all defaults); ``InvalidRequest`` names field and reason."""
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        errors = [_field_error(error) for error in exc.errors(include_input=False)]
        first = errors[0]
        raise InvalidRequest(first["field"], first["reason"], errors) from None


def _field_error(error: Any) -> dict[str, str]:
    location = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"])
    # A model-level check names its own field ("endDate: ...").
    if not location and message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
        field, _, reason = message.partition(": ")
        return {"field": field, "reason": reason}
    if error["type"] == "json_invalid":
        return {"field": "body", "reason": "is not valid JSON"}
    if error["type"] == "model_type":
        return {"field": "body", "reason": "must be a JSON object"}
    if error["type"] == "extra_forbidden":
        return {"field": location, "reason": "is not a known field"}
    return {"field": location or "body", "reason": message}
