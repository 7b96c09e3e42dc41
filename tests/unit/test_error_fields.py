"""What a log line says of an exception: its type and gRPC code, never its text."""

from __future__ import annotations

from google.api_core import exceptions as api_exceptions

from shared import logs
from shared.errors import Unavailable

QUOTED = "dataMigrations/x/chunks/secret-document-path"


def test_a_google_error_is_named_by_its_type_and_grpc_code_only() -> None:
    fields = logs.error_fields(api_exceptions.FailedPrecondition(f"stale: {QUOTED}"))

    assert fields == {"error_type": "google.api_core.exceptions.FailedPrecondition",
                      "grpc_code": "FAILED_PRECONDITION"}


def test_a_retry_that_gave_up_names_its_last_error_and_its_code() -> None:
    last = api_exceptions.ServiceUnavailable(f"reset: {QUOTED}")
    gave_up = api_exceptions.RetryError(f"Deadline exceeded: {QUOTED}", last)

    assert logs.error_fields(gave_up) == {
        "error_type": "google.api_core.exceptions.RetryError",
        "cause_type": "google.api_core.exceptions.ServiceUnavailable",
        "grpc_code": "UNAVAILABLE"}


def test_an_error_raised_from_another_names_both() -> None:
    try:
        try:
            raise api_exceptions.DeadlineExceeded(QUOTED)
        except api_exceptions.DeadlineExceeded as error:
            raise Unavailable("Cloud Tasks refused a task: DeadlineExceeded") from error
    except Unavailable as unavailable:
        fields = logs.error_fields(unavailable)

    assert fields == {"error_type": "shared.errors.Unavailable",
                      "cause_type": "google.api_core.exceptions.DeadlineExceeded",
                      "grpc_code": "DEADLINE_EXCEEDED"}


def test_any_other_exception_is_named_by_its_type() -> None:
    assert logs.error_fields(KeyError(QUOTED)) == {"error_type": "builtins.KeyError"}
