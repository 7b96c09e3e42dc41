import datetime as dt

import pytest

from shared.errors import InvalidRequest
from shared.models import BackfillType, parse_request

TODAY = dt.date(2026, 11, 22)
VALID = (b'{"type": "webhook_replay", "startDate": "2025-01-01", "endDate": "2025-01-10", '
         b'"dryRun": false, "maxEvents": 1000}')


def test_the_runbook_body_parses() -> None:
    request = parse_request(VALID, 366, TODAY)

    assert request.type is BackfillType.WEBHOOK_REPLAY
    assert (request.start_date, request.end_date) == (dt.date(2025, 1, 1), dt.date(2025, 1, 10))
    assert request.dry_run is False
    assert request.max_events == 1000
    assert request.days == 10


def test_optional_fields_default_to_a_live_unbounded_run() -> None:
    request = parse_request(
        b'{"type": "reversal_backfill", "startDate": "2025-01-01", "endDate": "2025-01-01"}',
        366, TODAY)

    assert request.dry_run is False
    assert request.max_events is None


@pytest.mark.parametrize(("raw", "field", "reason"), [
    (b"", "body", "a JSON object is required"),
    (b"{not json", "body", "is not valid JSON"),
    (b"[1, 2]", "body", "must be a JSON object"),
    (b'{"type": "nope", "startDate": "2025-01-01", "endDate": "2025-01-02"}', "type", "Input"),
    (b'{"type": "webhook_replay", "endDate": "2025-01-02"}', "startDate", "Field required"),
    (b'{"type": "webhook_replay", "startDate": "2025-1-1", "endDate": "2025-01-02"}',
     "startDate", "YYYY-MM-DD"),
    (b'{"type": "webhook_replay", "startDate": "2025-01-03", "endDate": "2025-01-02"}',
     "endDate", "on or after startDate"),
    (b'{"type": "webhook_replay", "startDate": "2025-01-01", "endDate": "2025-01-02", '
     b'"dryRun": "false"}', "dryRun", "boolean"),
    (b'{"type": "webhook_replay", "startDate": "2025-01-01", "endDate": "2025-01-02", '
     b'"maxEvents": 0}', "maxEvents", "greater than 0"),
    (b'{"type": "webhook_replay", "startDate": "2025-01-01", "endDate": "2025-01-02", '
     b'"maxEvents": "10"}', "maxEvents", "integer"),
    (b'{"type": "webhook_replay", "startDate": "2025-01-01", "endDate": "2025-01-02", '
     b'"maxEvent": 10}', "maxEvent", "not a known field"),
    (b'{"type": "webhook_replay", "startDate": "2024-01-01", "endDate": "2025-01-02"}',
     "endDate", "at most 366"),
    (b'{"type": "webhook_replay", "startDate": "2026-11-23", "endDate": "2026-11-24"}',
     "startDate", "in the future"),
])
def test_bad_bodies_name_the_field_and_reason(raw: bytes, field: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(raw, 366, TODAY)

    assert caught.value.field == field
    assert reason in caught.value.reason
    assert caught.value.body()["field"] == field


def test_lookback_days_is_the_days_ending_today() -> None:
    request = parse_request(b'{"type": "webhook_replay", "lookbackDays": 2, "dryRun": false, '
                            b'"maxEvents": 50000}', 366, TODAY)

    assert (request.start_date, request.end_date) == (dt.date(2026, 11, 21), TODAY)
    assert request.lookback_days == 2
    assert request.force is False


@pytest.mark.parametrize(("raw", "field", "reason"), [
    (b'{"type": "webhook_replay", "lookbackDays": 2, "startDate": "2025-01-01"}',
     "lookbackDays", "not both"),
    (b'{"type": "webhook_replay", "lookbackDays": 0}', "lookbackDays", "greater than 0"),
    (b'{"type": "webhook_replay", "lookbackDays": 400}', "lookbackDays", "at most 366"),
    (b'{"type": "webhook_replay"}', "startDate", "or give lookbackDays"),
    (b'{"type": "webhook_replay", "lookbackDays": 2, "force": "yes"}', "force", "boolean"),
])
def test_bad_lookbacks_name_the_field_and_reason(raw: bytes, field: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(raw, 366, TODAY)

    assert (caught.value.field, reason in caught.value.reason) == (field, True)
