import datetime as dt

import pytest

from shared.api.bodies import parse_request
from shared.backfills.registry import BackfillType
from shared.errors import InvalidRequest

TODAY = dt.date(2026, 11, 22)
VALID = (b'{"type": "webhook_replay", "startDate": "2025-01-01", "endDate": "2025-01-10", '
         b'"dryRun": false, "maxEvents": 1000}')


def test_the_runbook_body_parses() -> None:
    request = parse_request(VALID, 366, TODAY)

    assert request.type == BackfillType.WEBHOOK_REPLAY
    assert (request.start_date, request.end_date) == (dt.date(2025, 1, 1), dt.date(2025, 1, 10))
    assert request.dry_run is False
    assert request.max_events == 1000
    assert request.days == 10


def test_optional_fields_default_to_an_unbounded_dry_run() -> None:
    request = parse_request(
        b'{"type": "reversal_backfill", "startDate": "2025-01-01", "endDate": "2025-01-01"}',
        366, TODAY)

    # Live is never the silent default: a caller who leaves dryRun out changes nothing.
    assert request.dry_run is True
    assert request.max_events is None
    live = parse_request(b'{"type": "reversal_backfill", "startDate": "2025-01-01", '
                         b'"endDate": "2025-01-01", "dryRun": false}', 366, TODAY)
    assert live.dry_run is False


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


@pytest.mark.parametrize(("end", "effective"), [
    ("2024-11-31", dt.date(2024, 11, 30)), ("2024-02-30", dt.date(2024, 2, 29)),
    ("2023-02-29", dt.date(2023, 2, 28)), ("2024-04-31", dt.date(2024, 4, 30)),
])
def test_an_end_date_past_its_months_end_means_the_months_last_day(
        end: str, effective: dt.date) -> None:
    raw = f'{{"type": "webhook_replay", "startDate": "{end[:4]}-01-01", "endDate": "{end}"}}'

    request = parse_request(raw.encode(), 366, TODAY)

    assert (request.end_date, request.requested_end_date) == (effective, end)


def test_a_real_end_date_is_kept_as_sent() -> None:
    request = parse_request(VALID, 366, TODAY)

    assert request.requested_end_date is None


@pytest.mark.parametrize(("raw", "field", "reason"), [
    (b'{"type": "webhook_replay", "startDate": "2024-02-30", "endDate": "2024-03-31"}',
     "startDate", "start on 2024-02-29 or 2024-03-01"),
    (b'{"type": "webhook_replay", "startDate": "2024-01-01", "endDate": "2024-02-32"}',
     "endDate", "day value is outside"),
    (b'{"type": "reversal_backfill", "startDate": "2024-01-01", "endDate": "2024-01-02", '
     b'"includeProcessed": true}', "includeProcessed", "only webhook_replay"),
    (b"[" * 50_000 + b"]" * 50_000, "body", ""),
])
def test_days_no_month_has_and_misplaced_options_name_the_field(
        raw: bytes, field: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(raw, 366, TODAY)

    assert caught.value.field == field
    assert reason in caught.value.reason
