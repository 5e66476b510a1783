"""The ground floor of every config: the strict pydantic base and how ``s3://`` URIs are reached.

:mod:`polymodal.storage` needs :class:`StorageOptions` and :mod:`polymodal.config` reads YAML
through storage, so these two live here, below both (``polymodal.config`` re-exports them).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: pydantic error type whose input must never be echoed back: it holds a credential
CREDENTIALS_IN_URL = "credentials_in_url"
_URL_AUTHORITY = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://)?([^/?#]*)")


class StorageOptions(StrictModel):
    """How ``s3://`` URIs are reached. Credentials come from the standard AWS chain
    (env vars, shared files, instance roles) or, for the embedded server, from env.

    No field holds a secret: this section is written in clear into every run's
    ``config.yaml``, and unknown keys (``aws_secret_access_key``, ...) are errors."""

    # a rejected endpoint_url may hold a password: keep it out of ValidationError messages
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    region: str | None = None
    profile: str | None = Field(None, description="AWS shared-config profile name")
    anon: bool = False

    @field_validator("endpoint_url")
    @classmethod
    def _no_credentials_in_url(cls, url: str | None) -> str | None:
        # user:password@host would be copied into every exported config.yaml and error message
        if url is not None and "@" in _URL_AUTHORITY.match(url).group(1):
            raise PydanticCustomError(
                CREDENTIALS_IN_URL,
                "must not hold credentials (user:password@host); give the host only and set "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile in the environment")
        return url
