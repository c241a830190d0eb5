"""Settings in one place (STYLE.md 5).

Every setting is an environment variable ``TIDINGS_<NAME>``; a ``.env`` file in the project
folder (``TIDINGS_PROJECT_DIR``, default the working directory) is read too, and the project's
``channels/*.yaml`` give the channel settings (which provider, senders, rate limits). The order,
first wins: constructor arguments, the environment, ``.env``, ``channels/``, the defaults.
Relative paths (a SQLite file, the outbox and models folders) are read from the project folder:

>>> Settings(database_url="sqlite:///:memory:").database_url
'sqlite:///:memory:'

The README's configuration table is checked against this class by a test, so a new setting
without documentation fails the suite.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from tidings.errors import ConfigurationError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TIDINGS_", extra="ignore", frozen=True, validate_default=True
    )

    project_dir: Path = Field(
        Path("."),
        description="The tidings project: journeys/, segments/, templates/, channels/, .env. "
        "Default: the working directory (`--project DIR` on the command line).",
    )

    database_url: str = Field(
        "sqlite:///tidings.db",
        description="SQLAlchemy URL of the CRM store. PostgreSQL: "
        "postgresql+psycopg://user@host:5432/db",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL shared by all workers (rate limits, caps, event buffer). "
        "Unset: in-process equivalents on one machine.",
    )
    default_region: str = Field(
        "US",
        description="ISO 3166 region used to read phone numbers written without a country code.",
    )
    import_batch_size: int = Field(
        2000, ge=1, le=100_000, description="Rows per transaction when importing files."
    )
    import_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes that check the rows of an imported file: 0 = one per CPU beyond "
        "two (at most 4) for files of 8 MB or more, none for smaller ones or on two cores; "
        "1 = none.",
    )
    stale_days: int = Field(
        365, ge=1, description="Contacts not updated for this many days count as stale."
    )
    # channels (channels/, docs/channels.md)
    sendgrid_host: str = Field(
        "https://api.sendgrid.com",
        description="SendGrid API base URL; EU data residency: https://api.eu.sendgrid.com.",
    )
    sendgrid_api_key: SecretStr | None = Field(None, description="SendGrid API key (Bearer).")
    sendgrid_concurrency: int = Field(
        16, ge=1, le=256, description="Concurrent SendGrid API calls per adapter (thread pool)."
    )
    sendgrid_timeout: float = Field(
        10.0, gt=0, description="Seconds before one SendGrid API call times out."
    )
    sendgrid_keepalive: bool = Field(
        True,
        description="Reuse HTTP connections to SendGrid (one per worker thread); false: the "
        "SDK's own urllib transport, a new connection per message.",
    )
    smtp_host: str = Field("localhost", description="SMTP relay host.")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP relay port (465 for ssl).")
    smtp_username: str | None = Field(None, description="SMTP AUTH user; unset: no AUTH.")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password.")
    smtp_security: Literal["none", "starttls", "ssl"] = Field(
        "starttls", description="SMTP transport security: none, starttls or ssl (implicit TLS)."
    )
    smtp_timeout: float = Field(30.0, gt=0, description="SMTP socket timeout in seconds.")
    smtp_connections: int = Field(
        1,
        ge=1,
        le=64,
        description="SMTP connections (and sending threads) per worker; more than 1 sends in "
        "parallel, and a crash may leave that many messages in doubt.",
    )
    smtp_ca_file: str | None = Field(
        None, description="PEM file of CAs to trust for the SMTP server; unset: system CAs."
    )
    twilio_account_sid: str | None = Field(None, description="Twilio account SID (AC...).")
    twilio_auth_token: SecretStr | None = Field(None, description="Twilio auth token.")
    twilio_api_base: str = Field(
        "https://api.twilio.com", description="Twilio REST API base URL (tests: a local server)."
    )
    twilio_from_number: str | None = Field(
        None, description="Default SMS sender number (E.164) when a message names none."
    )
    twilio_messaging_service_sid: str | None = Field(
        None, description="Default Twilio Messaging Service SID (MG...); used if no from number."
    )
    twilio_status_callback: str | None = Field(
        None,
        description="Public URL Twilio posts delivery status to; our message id is appended "
        "as ?tidings_message_id=...",
    )
    twilio_concurrency: int = Field(
        8, ge=1, le=256, description="Concurrent Twilio API calls per adapter (thread pool)."
    )
    outbox_dir: Path = Field(
        Path("outbox"),
        description="Folder the sandbox 'outbox' channel writes .eml/.json files to.",
    )
    rate_limits: dict[str, float] = Field(
        default_factory=dict,
        description="Sends per second per provider or provider:sender, as JSON, e.g. "
        '{"twilio": 1, "twilio:+15005550006": 10, "sendgrid": 100}; unlisted: unlimited.',
    )
    send_max_attempts: int = Field(
        4, ge=1, le=20, description="Attempts per message for retryable provider errors."
    )
    send_backoff_base: float = Field(
        0.5, ge=0, description="First retry delay in seconds; doubles per attempt, with jitter."
    )
    send_backoff_max: float = Field(30.0, ge=0, description="Longest retry delay in seconds.")
    send_max_retry_after: float = Field(
        60.0,
        ge=0,
        description="Longest Retry-After the adapter waits in process; longer ones are handed "
        "back to the engine as status 'retry'.",
    )
    # templates (templates/, docs/templates.md)
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="Public base URL of the web app: tracked links /t/c/, pixel /t/o/, "
        "unsubscribe /u/. Use https in production (RFC 8058 one-click needs it).",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Secret that signs tracking and unsubscribe tokens. Unset: an INSECURE "
        "built-in development key is used and a warning logged; never send real mail so.",
    )
    suppression_key: SecretStr | None = Field(
        None,
        description="Secret of the keyed hashes (HMAC-SHA256) that an erased contact's email, "
        "phone and external id are kept as, so an import cannot bring them back. Unset: "
        "TIDINGS_SECRET_KEY. Keep it: after a change, earlier erasures are no longer "
        "recognised (a warning names them).",
    )
    unsubscribe_mailto: str | None = Field(
        None, description="Address added as mailto: to List-Unsubscribe; unset: https URL only."
    )
    sms_segment_limit: int = Field(
        3, ge=1, description="Templates check and previews warn when an SMS needs more segments."
    )
    template_max_output: int = Field(
        2_000_000,
        ge=1_000,
        description="Characters one render of a template part may write; also caps 'x' * n.",
    )
    template_timeout: float = Field(
        2.0, gt=0, description="Seconds one render may take (checked on calls and range loops)."
    )
    models_dir: Path = Field(
        Path("models"),
        description="Folder where `tidings models train` keeps the trained score models (joblib).",
    )
    scores_horizon_days: int = Field(
        90,
        ge=7,
        le=730,
        description="Horizon N of the scores: churn_risk = P(no order in the next N days), "
        "clv_90d = expected revenue in the next N days.",
    )
    # journeys (journeys/, docs/journeys.md)
    email_channel: Literal["outbox", "sendgrid", "smtp"] = Field(
        "outbox", description="Channel that sends email: outbox (sandbox), sendgrid or smtp."
    )
    sms_channel: Literal["outbox", "twilio"] = Field(
        "outbox", description="Channel that sends SMS: outbox (sandbox) or twilio."
    )
    email_from: str = Field(
        "hello@tidings.example", description="From address when a template sets none."
    )
    email_from_name: str | None = Field(None, description="From name when a template sets none.")
    frequency_cap: str | None = Field(
        "3 per 7 days",
        description="Marketing messages per contact per window ('off' for none); journeys may "
        "override.",
    )
    quiet_hours: str | None = Field(
        "21:00-08:00",
        description="No marketing sends in this local-time window ('off' for none); deferred, "
        "not dropped.",
    )
    default_timezone: str = Field(
        "UTC", description="Timezone for contacts without one (quiet hours, wait_until)."
    )
    default_locale: str = Field(
        "en",
        description="The language templates without a locale in their file name are written "
        "in (NAME.mjml; their HTML gets this lang); contacts whose locale no variant matches get "
        "them.",
    )
    reconcile_after: str = Field(
        "10 minutes",
        description="Messages in flight longer than this, whose worker's lease has expired, are "
        "checked with the provider (sent, or safe to send again) at each tick.",
    )
    lease_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="A worker owns the messages it claimed for this long, renewed by its "
        "heartbeat every third of it; a longer pause (or a dead worker) loses them to reconcile, "
        "and the worker then sends none of them.",
    )
    # web (web/, docs/web.md)
    sendgrid_webhook_public_key: str | None = Field(
        None,
        description="SendGrid Signed Event Webhook verification key (base64, from Mail Settings); "
        "unset: /webhooks/sendgrid refuses every request.",
    )
    webhook_max_age: int = Field(
        600,
        ge=1,
        description="Seconds a signed SendGrid webhook timestamp may be old (or ahead): replays "
        "older than this are refused.",
    )
    twilio_help_text: str = Field(
        "Reply STOP to unsubscribe, START to resubscribe.",
        description="The answer to an inbound SMS HELP.",
    )
    web_max_body_bytes: int = Field(
        2_000_000, ge=1024, description="Largest request body the web app accepts (413 above)."
    )
    ingest_stream: str = Field(
        "tidings:ingest",
        description="Redis stream that buffers webhook and event posts (with TIDINGS_REDIS_URL).",
    )
    ingest_batch_size: int = Field(
        500, ge=1, le=10_000, description="Stream entries `tidings ingest` writes per transaction."
    )
    ingest_claim_idle_ms: int = Field(
        60_000,
        ge=100,
        description="Pending stream entries idle this long (a dead consumer's) are claimed.",
    )
    idempotency_ttl_hours: int = Field(
        24, ge=1, description="Hours an Idempotency-Key response is remembered by the event API."
    )
    segment_work_mem: str = Field(
        "64MB",
        pattern=r"^([1-9][0-9]*(kB|MB|GB))?$",
        description="PostgreSQL work_mem (SET LOCAL) in the transaction that evaluates or "
        "refreshes a segment, e.g. 64MB; empty: the server's. That transaction also sets "
        "jit = off (docs/segments.md).",
    )
    live_loop: bool = Field(
        True,
        description="The web app runs the live segments' loop in a background thread (each "
        "process): it evaluates the changes the writes recorded. false: run it apart, "
        "`tidings live` or `tidings serve --live-process` (docs/segments.md).",
    )
    live_batch: int = Field(
        5000,
        ge=1,
        le=100_000,
        description="Recorded changes the live loop takes per transaction (behind a backlog, "
        "up to four times as many).",
    )
    live_poll_seconds: float = Field(
        1.0,
        gt=0,
        description="How often an idle live loop looks for changes other processes recorded "
        "(its own process's writes wake it at once; a busy loop steps without waiting). For "
        "`tidings live`, which no write wakes, a short one such as 0.2.",
    )
    live_plan_seconds: float = Field(
        10.0,
        ge=0,
        description="Seconds a process reuses its list of live segments before reading the "
        "journeys again: a journey activated elsewhere makes its segments live within this.",
    )
    # consent (channels/email.yaml double_opt_in:, channels/topics.yaml; docs/web.md)
    double_opt_in_sources: list[str] = Field(
        default_factory=list,
        description="Consent sources whose marketing email grant must be confirmed by the "
        'contact first (double opt-in), as JSON, shell patterns, e.g. ["api:*", "import:*"]; '
        "empty: none. Also `double_opt_in: {sources: [...]}` in channels/email.yaml.",
    )
    double_opt_in_template: str = Field(
        "confirm_subscription",
        description="Email template (templates/email/<name>.mjml) of the confirmation email; "
        "it links {{ confirm_url }}.",
    )
    double_opt_in_expires: str = Field(
        "7 days",
        description="How long a confirmation link works, e.g. '48 hours'; later it is refused "
        "and the consent stays pending.",
    )
    # -- new settings go above this line (keep one Field with a description each) --

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        from tidings.project import ChannelsSource

        given = getattr(init_settings, "init_kwargs", {}).get("project_dir")
        project = Path(given or os.environ.get("TIDINGS_PROJECT_DIR") or ".")
        dotenv = DotEnvSettingsSource(settings_cls, env_file=project / ".env")
        return (init_settings, env_settings, dotenv, ChannelsSource(settings_cls, project))

    @field_validator("default_locale")
    @classmethod
    def _locale(cls, value: str) -> str:
        from tidings.templates.locales import parse

        parsed = parse(value)
        if parsed is None:
            raise ValueError(f"unknown locale {value!r}: use a code such as en, de or pt_BR")
        return parsed

    @field_validator("project_dir")
    @classmethod
    def _absolute_project(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("outbox_dir", "models_dir")
    @classmethod
    def _in_project(cls, value: Path, info: ValidationInfo) -> Path:
        project: Path = info.data["project_dir"]
        return project / value.expanduser()

    @field_validator("database_url")
    @classmethod
    def _sqlite_in_project(cls, value: str, info: ValidationInfo) -> str:
        """``sqlite:///tidings.db`` is the project's store, wherever the command runs."""
        from sqlalchemy.engine import make_url

        url = make_url(value)
        if url.get_backend_name() != "sqlite" or url.database in {None, "", ":memory:"}:
            return value
        if url.database.startswith("file:") or Path(url.database).is_absolute():
            return value
        project: Path = info.data["project_dir"]
        path = project / url.database
        return url.set(database=str(path)).render_as_string(hide_password=False)

    @property
    def journeys_dir(self) -> Path:
        return self.project_dir / "journeys"

    @property
    def segments_dir(self) -> Path:
        return self.project_dir / "segments"

    @property
    def templates_dir(self) -> Path:
        return self.project_dir / "templates"

    @property
    def channels_dir(self) -> Path:
        return self.project_dir / "channels"

    @field_validator("double_opt_in_expires")
    @classmethod
    def _expiry(cls, value: str) -> str:
        from tidings.segments.rules import parse_duration

        try:
            parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"TIDINGS_DOUBLE_OPT_IN_EXPIRES={value!r}: {exc}") from None
        return value

    @field_validator("default_region")
    @classmethod
    def _region_upper(cls, value: str) -> str:
        import phonenumbers

        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"TIDINGS_DEFAULT_REGION={value!r} is not a region phonenumbers knows; "
                "use an ISO 3166 code such as US, GB, DE"
            )
        return region


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment and the project.

    A bad value is a ``ConfigurationError`` of one line naming the variable, the value and
    what it may be (the command line prints it and exits 2).
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise settings_error(exc) from None


def settings_error(exc: ValidationError) -> ConfigurationError:
    """One line per bad setting, joined: ``TIDINGS_EMAIL_CHANNEL='sendgird' is not one of
    outbox, sendgrid, smtp (did you mean 'sendgrid'?)``.

    >>> try:
    ...     Settings(email_channel="sendgird")
    ... except ValidationError as exc:
    ...     print(settings_error(exc))
    TIDINGS_EMAIL_CHANNEL='sendgird' is not one of outbox, sendgrid, smtp (did you mean 'sendgrid'?)
    """
    return ConfigurationError("; ".join(_explain(error) for error in exc.errors()))


def _explain(error: Any) -> str:
    import difflib

    name = str(error["loc"][0]) if error.get("loc") else ""
    field = Settings.model_fields.get(name)
    variable = f"TIDINGS_{name.upper()}" if name else "a setting"
    secret = field is not None and "SecretStr" in str(field.annotation)
    value = "<secret>" if secret else repr(error.get("input"))
    message = str(error.get("msg", "is not valid"))
    if error.get("type") == "literal_error" and field is not None:
        choices = [str(c) for c in get_args(field.annotation)]
        close = difflib.get_close_matches(str(error.get("input")), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{variable}={value} is not one of {', '.join(choices)}{hint}"
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
        if message.startswith(variable):  # the validator already says which and why
            return message
    message = message[:1].lower() + message[1:]
    return f"{variable}={value}: {message}"


def use_project(directory: str | Path) -> None:
    """Make ``directory`` the project of this process (``--project``) and read it anew."""
    os.environ["TIDINGS_PROJECT_DIR"] = str(Path(directory).expanduser().resolve())
    get_settings.cache_clear()


def settings_markdown() -> str:
    """The configuration table of the README, generated from ``Settings`` (see ``make docs``)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "unset" if default is None else f"`{default}`"
        if info.annotation is not None and "SecretStr" in str(info.annotation):
            shown = "unset (secret)"
        meaning = (info.description or "").replace("|", "\\|")
        rows.append(f"| `TIDINGS_{name.upper()}` | {shown} | {meaning} |")
    return "\n".join(rows)


START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def refresh_readme(text: str) -> str:
    """``text`` with the block between the settings markers replaced by the current table."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{settings_markdown()}\n{END}{tail}"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if len(sys.argv) > 1:
        readme = Path(sys.argv[1])
        readme.write_text(refresh_readme(readme.read_text()))
    else:
        print(settings_markdown())
