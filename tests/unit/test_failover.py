"""The retry policy's arithmetic, the Retry-After header, and the models file's checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from turnstream.providers.openai import retry_after
from turnstream.settings import ModelConfig, ModelSettings, SettingsError
from turnstream.usecases.failover import MAX_WAIT_S, backoff_s

MODEL = ModelConfig(id="m", provider="demo", retry_backoff_s=0.5)


@pytest.mark.parametrize(("jitter", "factor"), [(0.0, 0.5), (0.5, 1.0), (0.999, 1.499)])
def test_the_backoff_doubles_per_attempt_within_its_jitter(jitter: float, factor: float) -> None:
    waits = [backoff_s(MODEL, attempt, None, lambda: jitter) for attempt in (1, 2, 3)]
    assert waits == pytest.approx([0.5 * factor, 1.0 * factor, 2.0 * factor])


def test_a_retry_after_wins_when_longer_and_over_a_minute_means_no_retry() -> None:
    assert backoff_s(MODEL, 1, 7.0, lambda: 0.5) == 7.0
    assert backoff_s(MODEL, 1, 0.1, lambda: 0.5) == 0.5
    assert backoff_s(MODEL, 1, MAX_WAIT_S + 1, lambda: 0.5) is None
    slow = ModelConfig(id="s", provider="demo", retry_backoff_s=60)
    assert backoff_s(slow, 5, None, lambda: 0.5) == MAX_WAIT_S


def test_retry_after_reads_milliseconds_seconds_and_dates() -> None:
    assert retry_after({"retry-after-ms": "250"}) == 0.25
    assert retry_after({"retry-after": "3"}) == 3.0
    later = datetime.now(UTC) + timedelta(seconds=30)
    parsed = retry_after({"retry-after": format_datetime(later, usegmt=True)})
    assert parsed is not None
    assert 25 <= parsed <= 30
    assert retry_after({}) is None
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({"retry-after": "-5"}) == 0.0


@pytest.mark.parametrize(
    ("fallback", "message"),
    [('["nope"]', "unknown fallback model 'nope'"), ('["a"]', "names itself as a fallback")],
)
def test_the_models_file_names_only_other_configured_fallbacks(
    tmp_path: Path, fallback: str, message: str
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(f'[[models]]\nid = "a"\nprovider = "demo"\nfallback = {fallback}\n')
    with pytest.raises(SettingsError, match=message):
        ModelSettings(file=path).load()


def test_retries_are_bounded_in_the_models_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nid = "a"\nprovider = "demo"\nretries = 99\n')
    with pytest.raises(SettingsError, match="retries"):
        ModelSettings(file=path).load()
