"""The bundle's configuration: one Settings object, the only reader of the environment.

Every knob is an environment variable prefixed ``BACKFILL_`` (plus ``FIRESTORE_EMULATOR_HOST`` and
``CLOUD_TASKS_EMULATOR_HOST``, which the Google client libraries read too). Settings are validated
once, at start, and refuse unsafe combinations: a production configuration cannot name local
certificates, a local issuer, an emulator or a fault injection, so a token minted by the local
issuer can never be accepted in production.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import socket
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GOOGLE_CERTS_URLS = (
    "https://www.googleapis.com/oauth2/v1/certs",
    "https://www.googleapis.com/oauth2/v3/certs",
)
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")

# One commit's budget. Firestore no longer caps a commit at 500 writes; what remains is its
# 10 MiB request limit, and the emulator's gRPC message limit of 4 MiB (measured: 5,000
# event-sized writes commit in 0.5 s; 10,000, 6.7 MB, are refused). A commit stays under both by
# bytes, and under a write count that keeps one commit's latency and retry cost bounded.
MAX_COMMIT_BYTES = 3 * 1024 * 1024
MAX_WRITES_PER_COMMIT = 5000
# Applying one event writes at most four documents (ledger entry, purchase entry, wallet,
# event); the chunk checkpoint is one more.
MAX_WRITES_PER_EVENT = 4
MAX_PAGE_SIZE = (MAX_WRITES_PER_COMMIT - 1) // MAX_WRITES_PER_EVENT
# The most chunks one run plans. Planning writes them in as many commits as it takes; the
# bound keeps the status of the largest run within its measured time (``make bench``) and the
# planning task within its deadline.
MAX_CHUNKS = 10_000

CsvList = Annotated[tuple[str, ...], NoDecode]


class Environment(enum.StrEnum):
    """Where the bundle runs; only ``local`` may use emulators, local tokens and faults."""

    PRODUCTION = "production"
    LOCAL = "local"


class Stage(enum.StrEnum):
    """The deployment's name as operators say it (``BACKFILL_ENVIRONMENT``), named in every
    answer, page and CLI banner so that nobody changes prod believing it is staging. Only a
    local machine is ``local``; a deployed bundle is ``prod`` unless it says otherwise."""

    LOCAL = "local"
    TEST = "test"
    STAGING = "staging"
    PROD = "prod"


def _is_local_url(url: str) -> bool:
    """Whether ``url`` points at this machine (or at no host, or at a link-local service such
    as the metadata server) in any of the spellings a resolver accepts: ``localhost.``,
    ``127.1``, ``0x7f.1``, ``0.0.0.0``, ``[::1]``, ``[::ffff:127.0.0.1]``."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return True  # unparsable (e.g. an unclosed "[") is no deployed function's URL
    if not host or host == "localhost" or host.endswith(".localhost"):
        return True
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:  # the legacy IPv4 forms that inet_aton (and so most resolvers) accept
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified or address.is_link_local


class Settings(BaseSettings):
    """Validated configuration of every function; see the README for each variable."""

    model_config = SettingsConfigDict(env_prefix="BACKFILL_", frozen=True, extra="ignore")

    env: Environment = Environment.PRODUCTION
    environment: Stage | None = None
    enabled: bool = True
    project_id: str = Field(min_length=1)
    database: str = "(default)"

    tasks_location: str = "us-central1"
    tasks_queue: str = "backfill-chunks"
    chunk_url: str = Field(min_length=1)
    chunk_audience: str = ""
    status_url: str = ""
    # The Pub/Sub topic (its id, in project_id) every run's status changes are published to
    # (shared.adapters.notices); empty: notices are recorded in Firestore, not sent.
    notices_topic: str = Field("", max_length=255, pattern=r"^([A-Za-z][A-Za-z0-9._~+%-]{2,254})?$")

    operator_audiences: CsvList = Field(min_length=1)
    operators: CsvList = ()
    # Who may read (status, errors, gaps, the page, the OpenAPI document) and change nothing.
    viewers: CsvList = ()
    scheduler_identity: str = ""
    tasks_identity: str = Field(min_length=1)
    certs_url: str = GOOGLE_CERTS_URLS[0]
    issuers: CsvList = GOOGLE_ISSUERS

    chunk_days: int = Field(1, ge=1, le=31)
    # Planning splits a window holding more eligible events than one chunk should take into
    # smaller windows: a chunk is one task's sequential page loop, so its size bounds how long
    # it runs. The size is what a chunk applies in ``chunk_goal_seconds`` at the expected rate
    # of one chunk's page loop (``chunk_events_per_second``; ``make bench`` measures it), or
    # ``split_events`` when set.
    chunk_goal_seconds: float = Field(60.0, gt=0, le=3600)
    # Chunk tasks the queue runs at once (Terraform passes the queue's
    # max_concurrent_dispatches): what a run's estimate assumes.
    queue_concurrency: int = Field(20, ge=1, le=1000)
    chunk_events_per_second: float = Field(200.0, gt=0, le=100_000)
    split_events: int | None = Field(None, ge=10)
    page_size: int = Field(500, ge=1, le=MAX_PAGE_SIZE)
    time_budget_seconds: float = Field(240.0, gt=0)
    dispatch_deadline_seconds: int = Field(600, ge=15, le=1800)
    task_max_attempts: int = Field(10, ge=1, le=100)
    # At most 3,660 days of daily windows: within MAX_CHUNKS, before any split.
    max_range_days: int = Field(366, ge=1, le=3660)
    enqueue_workers: int = Field(16, ge=1, le=64)
    first_errors_shown: int = Field(20, ge=1, le=500)

    # The throttle (shared.domain.throttle): a default ceiling for runs that name none, and the
    # ramp.
    max_events_per_second: int | None = Field(None, gt=0, le=1_000_000)
    ramp_start_writes: int = Field(500, ge=0, le=1_000_000)
    ramp_step_minutes: float = Field(5.0, gt=0, le=1440)

    # The money guardrails' defaults for runs that name none (shared.executor.guard): the points
    # a run may move in all and of one customer, and whether a page may take a wallet below
    # zero. None: no cap.
    max_points: int | None = Field(None, gt=0)
    max_points_per_customer: int | None = Field(None, gt=0)
    allow_negative_wallets: bool = True

    # Plan, then apply exactly (shared.runs.plans): a live replay, reversal backfill or recovery
    # names the completed dry run it was reviewed from (planOf), which must be this recent and of
    # the same scope; required when true (unset: in prod). Planning stops a live run, writing
    # nothing, when its events differ from the plan's by more than the tolerance (a fraction).
    require_plan: bool | None = None
    # Whether a live run whose preflight fails is refused unless forced (unset: in prod).
    require_preflight: bool | None = None
    # Whether a live run (a trigger's, a rollback's) must give a ``reason``; None: in prod.
    require_reason: bool | None = None
    plan_max_age_hours: float = Field(24.0, gt=0, le=24 * 30)
    plan_tolerance: float = Field(0.0, ge=0, le=1)

    # Approval (shared.runs.control.approve): with approvers, a live run planned above
    # approval_events events, or that may move more than approval_points points (its maxPoints;
    # none counts as more), waits as awaiting_approval until another approver approves it.
    approvers: CsvList = ()
    approval_events: int | None = Field(None, gt=0)
    approval_points: int | None = Field(None, gt=0)

    # Whether Terraform created the alert policies (var.alerting_enabled): the preflight says so.
    alerting_enabled: bool = False
    # A live run whose share of failed events passes this while it runs is announced (a
    # notice, and the "run error rate high" log an alert counts), once its watchdog has seen
    # at least alert_min_events events of it (shared.runs.watchdog).
    alert_error_rate: float = Field(0.01, ge=0, lt=1)
    alert_min_events: int = Field(100, ge=1)

    # Run control (see the README's "Run control").
    max_active_runs: int = Field(3, ge=1, le=100)
    lease_seconds: float = Field(900.0, gt=0)
    breaker_error_rate: float = Field(0.5, gt=0, le=1)
    breaker_min_events: int = Field(200, ge=1)
    poison_attempts: int = Field(3, ge=1, le=20)
    settle_minutes: float = Field(15.0, ge=0, le=1440)
    # How often a run waiting for another (a reversal backfill behind a replay) asks again.
    chain_poll_seconds: float = Field(30.0, gt=0, le=3600)

    # PayNow's Management API, read by webhook_recovery (shared.adapters.paynow; what PayNow
    # documents: docs/paynow-api.md). The key is a secret: Secret Manager in production.
    paynow_api_url: str = "https://api.paynow.gg"
    paynow_store_id: str = Field("", max_length=64)
    paynow_webhook_id: str = Field("", max_length=64)
    paynow_api_key: SecretStr = SecretStr("")
    # Or a file holding it (a Secret Manager volume: its latest version, so a rotated key is
    # read again when PayNow refuses the old one); it wins over the variable.
    paynow_api_key_file: str = ""
    # The key's limit (calls per second, burst) and the share of it the bundle may use, for
    # every run and chunk together; how many days PayNow keeps webhook history.
    paynow_rate_per_second: float = Field(5.0, gt=0, le=1000)
    paynow_burst: int = Field(5, ge=1, le=1000)
    paynow_rate_fraction: float = Field(0.8, gt=0, le=1)
    paynow_retention_days: int = Field(30, ge=1, le=3660)
    paynow_timeout_seconds: float = Field(10.0, gt=0, le=120)

    firestore_emulator_host: str = Field("", validation_alias="FIRESTORE_EMULATOR_HOST")
    tasks_emulator_host: str = Field("", validation_alias="CLOUD_TASKS_EMULATOR_HOST")
    # Read by the Pub/Sub client itself; named here so production refuses it.
    pubsub_emulator_host: str = Field("", validation_alias="PUBSUB_EMULATOR_HOST")
    # Local only: the chunk handler's process exits right after its Nth page commit, before it
    # answers, as a handler killed mid-chunk would. Tests use it to prove at-least-once safety.
    fault_exit_after_commits: int = Field(0, ge=0)

    @field_validator("operator_audiences", "operators", "viewers", "approvers", "issuers",
                     mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        if self.time_budget_seconds > self.dispatch_deadline_seconds / 2:
            raise ValueError(
                "BACKFILL_TIME_BUDGET_SECONDS must be at most half of "
                "BACKFILL_DISPATCH_DEADLINE_SECONDS, so a chunk checkpoints well before "
                "Cloud Tasks gives up on the request"
            )
        if self.lease_seconds < self.time_budget_seconds:
            raise ValueError(
                "BACKFILL_LEASE_SECONDS must be at least BACKFILL_TIME_BUDGET_SECONDS: a live "
                "delivery may hold its chunk that long")
        if self.poison_attempts >= self.task_max_attempts:
            raise ValueError(
                "BACKFILL_POISON_ATTEMPTS must be below BACKFILL_TASK_MAX_ATTEMPTS, so an event "
                "is passed over before its chunk's task runs out of attempts")
        if self.env is Environment.PRODUCTION:
            self._refuse_local_shortcuts()
            if self.environment is Stage.LOCAL:
                raise ValueError("BACKFILL_ENVIRONMENT=local names a developer machine; a "
                                 "deployed bundle is test, staging or prod")
        elif self.environment is Stage.PROD:
            raise ValueError("BACKFILL_ENVIRONMENT=prod needs BACKFILL_ENV=production")
        return self

    def _refuse_local_shortcuts(self) -> None:
        problems: list[str] = []
        if self.certs_url not in GOOGLE_CERTS_URLS:
            problems.append("BACKFILL_CERTS_URL must be Google's certificates URL")
        if not set(self.issuers) <= set(GOOGLE_ISSUERS):
            problems.append("BACKFILL_ISSUERS may only name Google's issuers")
        if self.firestore_emulator_host or self.tasks_emulator_host or \
                self.pubsub_emulator_host:
            problems.append("emulator hosts (FIRESTORE_/CLOUD_TASKS_/PUBSUB_EMULATOR_HOST) "
                            "must be unset")
        if self.fault_exit_after_commits:
            problems.append("fault injection must be off")
        for name, url in (("BACKFILL_CHUNK_URL", self.chunk_url), ("BACKFILL_CHUNK_AUDIENCE",
                          self.chunk_audience or self.chunk_url)):
            if urlsplit(url).scheme != "https" or _is_local_url(url):
                problems.append(f"{name} must be an https URL of a deployed function")
        if urlsplit(self.paynow_api_url).scheme != "https" or _is_local_url(self.paynow_api_url):
            problems.append("BACKFILL_PAYNOW_API_URL must be an https URL of PayNow's API")
        if problems:
            raise ValueError(
                "unsafe production configuration (set BACKFILL_ENV=local only on a developer "
                "machine): " + "; ".join(problems)
            )

    @property
    def local(self) -> bool:
        return self.env is Environment.LOCAL

    @property
    def stage(self) -> Stage:
        """``BACKFILL_ENVIRONMENT``, or what ``BACKFILL_ENV`` implies: local, or prod."""
        if self.environment is not None:
            return self.environment
        return Stage.LOCAL if self.local else Stage.PROD

    @property
    def plan_required(self) -> bool:
        """``BACKFILL_REQUIRE_PLAN``, or whether this is prod."""
        return self.require_plan if self.require_plan is not None else self.stage is Stage.PROD

    @property
    def reason_required(self) -> bool:
        """``BACKFILL_REQUIRE_REASON``, or whether this is prod: a live run must say why it
        is started (``reason``)."""
        return self.require_reason if self.require_reason is not None \
            else self.stage is Stage.PROD

    @property
    def preflight_required(self) -> bool:
        """``BACKFILL_REQUIRE_PREFLIGHT``, or whether this is prod."""
        if self.require_preflight is not None:
            return self.require_preflight
        return self.stage is Stage.PROD

    @property
    def deployment(self) -> dict[str, str]:
        """Where this bundle writes, as every answer names it."""
        return {"project": self.project_id, "database": self.database,
                "environment": self.stage.value}

    @property
    def chunk_events(self) -> int:
        """The most eligible events planning leaves in one chunk: ``BACKFILL_SPLIT_EVENTS``, or
        what one chunk applies in its goal duration at its expected rate."""
        if self.split_events is not None:
            return self.split_events
        return max(10, int(self.chunk_goal_seconds * self.chunk_events_per_second))

    @property
    def effective_chunk_audience(self) -> str:
        return self.chunk_audience or self.chunk_url

    @property
    def queue_path(self) -> str:
        return (
            f"projects/{self.project_id}/locations/{self.tasks_location}"
            f"/queues/{self.tasks_queue}"
        )

    @property
    def trigger_identities(self) -> frozenset[str]:
        """Who may start a run: the operators and the Cloud Scheduler service account."""
        return frozenset(filter(None, (*self.operators, self.scheduler_identity)))

    @property
    def status_identities(self) -> frozenset[str]:
        """Who may read runs, errors and gaps: the viewers and the operators."""
        return frozenset((*self.operators, *self.viewers))

    @property
    def control_identities(self) -> frozenset[str]:
        """Who may pause, resume, cancel and retry runs: the operators only."""
        return frozenset(self.operators)

    @property
    def chunk_identities(self) -> frozenset[str]:
        """Only Cloud Tasks, calling as the tasks service account, may run a chunk."""
        return frozenset({self.tasks_identity})


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once (tests call ``cache_clear``)."""
    return Settings()
