"""Settings in one place (STYLE.md 5).

Every setting is an environment variable ``TIDINGS_<NAME>``; a ``.env`` file in the working
directory is read too. Constructor arguments override both:

>>> Settings(database_url="sqlite:///:memory:").database_url
'sqlite:///:memory:'

The README's configuration table is checked against this class by a test, so a new setting
without documentation fails the suite.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TIDINGS_", env_file=".env", extra="ignore", frozen=True
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
    stale_days: int = Field(
        365, ge=1, description="Contacts not updated for this many days count as stale."
    )

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
    """The process-wide settings, read once from the environment."""
    return Settings()
