"""A tidings project: the folder of content a marketing team keeps in git.

>>> project = init_project(Path("shop"))            # doctest: +SKIP
>>> sorted(p.name for p in project.iterdir())       # doctest: +SKIP
['.env', '.gitignore', 'channels', 'flows', 'journeys', 'prefect.yaml', 'segments', 'templates']

Content is found in one place, ``Settings.project_dir`` (``--project DIR`` or
``TIDINGS_PROJECT_DIR``, default the working directory): ``journeys/*.yaml``,
``segments/*.yaml``, ``templates/`` and ``channels/{email,sms}.yaml``. Nothing is read from the
installed package, except by ``tidings init``, which copies the starter project shipped in
``tidings/project_template/``.

The channel files say which provider sends each channel, as whom, and how fast; secrets stay in
the environment. The environment and ``.env`` override them (a staging machine may send
through the sandbox outbox while the project names SendGrid).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from tidings.errors import InputError
from tidings.yamlfile import InputErrors, load_yaml, validation_errors

STARTER = Path(__file__).with_name("project_template")


class _ChannelFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sender: str | None = Field(None, alias="from")
    rate_limit: float | None = Field(None, gt=0)


class DoubleOptIn(BaseModel):
    """``double_opt_in:`` in ``channels/email.yaml`` (docs/web.md, "Double opt-in")."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(min_length=1)
    template: str | None = None
    expires: str | None = None

    @field_validator("expires")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        from tidings.segments.rules import parse_duration

        if value is not None:
            parse_duration(value)
        return value


class EmailChannelFile(_ChannelFile):
    """``channels/email.yaml``: ``provider``, ``from``, ``from_name``, ``rate_limit``,
    ``double_opt_in``."""

    provider: Literal["outbox", "sendgrid", "smtp"] = "outbox"
    from_name: str | None = None
    double_opt_in: DoubleOptIn | None = None


class SmsChannelFile(_ChannelFile):
    """``channels/sms.yaml``: ``provider``, ``from``, ``messaging_service_sid``, ``rate_limit``."""

    provider: Literal["outbox", "twilio"] = "outbox"
    messaging_service_sid: str | None = None


def _read(path: Path, model: type[_ChannelFile]) -> _ChannelFile | None:
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", location=str(path)) from exc
    data = load_yaml(text, source=str(path)) or {}
    if not isinstance(data, dict):
        raise InputError(
            "a channel file is a mapping of keys", location=f"{path}:1", hint="e.g. provider: smtp"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        keys = ", ".join(sorted(model.model_fields))
        errors = validation_errors(
            exc,
            data,
            source=str(path),
            hint=lambda _e: f"keys are: {keys.replace('sender', 'from')}",
        )
        raise InputErrors(errors) from exc


def channel_settings(project: Path) -> dict[str, Any]:
    """The settings ``channels/email.yaml`` and ``channels/sms.yaml`` of ``project`` give."""
    values: dict[str, Any] = {}
    limits: dict[str, float] = {}
    email = _read(project / "channels" / "email.yaml", EmailChannelFile)
    if isinstance(email, EmailChannelFile):
        values["email_channel"] = email.provider
        if email.sender:
            values["email_from"] = email.sender
        if email.from_name:
            values["email_from_name"] = email.from_name
        if email.rate_limit:
            limits[email.provider] = email.rate_limit
        if email.double_opt_in:
            values["double_opt_in_sources"] = email.double_opt_in.sources
            if email.double_opt_in.template:
                values["double_opt_in_template"] = email.double_opt_in.template
            if email.double_opt_in.expires:
                values["double_opt_in_expires"] = email.double_opt_in.expires
    sms = _read(project / "channels" / "sms.yaml", SmsChannelFile)
    if isinstance(sms, SmsChannelFile):
        values["sms_channel"] = sms.provider
        if sms.sender:
            values["twilio_from_number"] = sms.sender
        if sms.messaging_service_sid:
            values["twilio_messaging_service_sid"] = sms.messaging_service_sid
        if sms.rate_limit:
            limits[sms.provider] = sms.rate_limit
    if limits:
        values["rate_limits"] = limits
    return values


class ChannelsSource(PydanticBaseSettingsSource):
    """A settings source: the project's channel files (below the environment and ``.env``)."""

    def __init__(self, settings_cls: type[BaseSettings], project: Path) -> None:
        super().__init__(settings_cls)
        self.project = project

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return channel_settings(self.project)


def init_project(directory: Path) -> Path:
    """Write a new project into ``directory`` (which must not exist or be empty)."""
    if directory.exists() and any(directory.iterdir()):
        raise InputError(
            f"{directory} already exists and is not empty",
            location=str(directory),
            hint="choose a new folder name; tidings init never overwrites files",
        )
    shutil.copytree(STARTER, directory, dirs_exist_ok=True)
    # Package data cannot carry dot files or a file named like the ignore patterns: write them.
    (directory / ".env").write_text(
        "# Settings of this project (every TIDINGS_* variable; the environment wins).\n"
        "# Relative SQLite paths are read from this folder.\n"
        "TIDINGS_DATABASE_URL=sqlite:///tidings.db\n",
        encoding="utf-8",
    )
    (directory / ".gitignore").write_text("tidings.db\noutbox/\nmodels/\n.env\n", encoding="utf-8")
    return directory
