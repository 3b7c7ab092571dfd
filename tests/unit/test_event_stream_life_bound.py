# intent_ref: platform.settings
"""An event stream's longest life stays below the 230 s Azure's front end allows an HTTP function: a stream it cut
would end in an error, which its client counts against its reconnects, instead of the stream's clean end."""

from __future__ import annotations

import pytest

from shared.config import SettingsError, load_settings
from tests.unit.test_config import _BASE, _clean_env  # noqa: F401  # the fixture


@pytest.mark.parametrize("seconds", ["1", "220", "225"])
def test_a_streams_life_up_to_225_s_is_taken(monkeypatch: pytest.MonkeyPatch, seconds: str) -> None:
    for key, value in {**_BASE, "QP_EVENT_STREAM_MAX_S": seconds}.items():
        monkeypatch.setenv(key, value)
    assert load_settings().QP_EVENT_STREAM_MAX_S == float(seconds)


@pytest.mark.parametrize("seconds", ["226", "230", "3600"])
def test_a_streams_life_the_front_end_would_cut_is_refused_and_named(
    monkeypatch: pytest.MonkeyPatch, seconds: str
) -> None:
    for key, value in {**_BASE, "QP_EVENT_STREAM_MAX_S": seconds}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match="QP_EVENT_STREAM_MAX_S"):
        load_settings()
