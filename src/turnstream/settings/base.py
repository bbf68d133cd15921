"""What every settings group shares: the prefix, the error, how a group names its
variables and writes itself back out for a child process."""

from __future__ import annotations

from typing import Any

import msgspec

ENV_PREFIX = "TURNSTREAM_"

SECRETS = frozenset({"JWT_SECRET", "METRICS_TOKEN"})
"""Variables a child process is not handed in its settings (it needs no secret)."""


class SettingsError(Exception):
    """A setting or the models file is malformed; the message says which and why."""


class Group(msgspec.Struct, frozen=True, kw_only=True):
    """A settings group; its fields' encoded names are their variables' (no prefix)."""

    def variables(self) -> dict[str, str]:
        """This group's values as ``TURNSTREAM_*`` variables (None left out)."""
        env: dict[str, str] = {}
        for name, value in msgspec.to_builtins(self, enc_hook=str).items():
            if value is None or name in SECRETS:
                continue
            env[ENV_PREFIX + name] = (
                ("true" if value else "false") if isinstance(value, bool) else str(value)
            )
        return env


def named(prefix: str) -> Any:
    """A group's ``rename``: ``prefix`` and the field's name in upper case."""
    return lambda field: prefix + field.upper()
