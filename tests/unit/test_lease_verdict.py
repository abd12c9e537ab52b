"""leadership.lease_verdict: when the lease keeper stops keeping the lease."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm.controller.leadership import lease_verdict

TTL, WATCHDOG = 5.0, 30.0


def test_a_fed_watchdog_and_a_fresh_lease_go_on() -> None:
    assert lease_verdict(100.0, 99.9, 99.0, TTL, WATCHDOG, refresh_failed=False) is None


def test_a_busy_loop_short_of_the_watchdog_keeps_the_lease() -> None:
    # The loop has not run for 20 s (a long pass): far past the TTL, short of the watchdog.
    assert lease_verdict(120.0, 100.0, 119.0, TTL, WATCHDOG, refresh_failed=False) is None


def test_a_loop_silent_beyond_the_watchdog_gives_the_lease_up() -> None:
    verdict = lease_verdict(131.0, 100.0, 130.0, TTL, WATCHDOG, refresh_failed=False)
    assert verdict is not None
    assert "event loop has not run for 31.0s" in verdict


def test_a_failed_refresh_is_retried_while_the_lease_cannot_have_run_out() -> None:
    assert lease_verdict(103.0, 102.9, 100.0, TTL, WATCHDOG, refresh_failed=True) is None
    assert lease_verdict(103.4, 103.3, 100.0, TTL, WATCHDOG, refresh_failed=True) \
        == "lease not refreshed in time"


def test_a_late_refresh_that_succeeded_is_no_reason_to_stop() -> None:
    assert lease_verdict(110.0, 109.9, 100.0, TTL, WATCHDOG, refresh_failed=False) is None


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1e6), st.booleans())
def test_the_watchdog_always_wins(now: float, fed_ago: float, refreshed_ago: float,
                                  failed: bool) -> None:
    verdict = lease_verdict(now, now - fed_ago, now - refreshed_ago, TTL, WATCHDOG, failed)
    if fed_ago > WATCHDOG:
        assert verdict is not None
        assert "watchdog" in verdict
    elif failed and refreshed_ago > TTL * 2 / 3:
        assert verdict == "lease not refreshed in time"
    else:
        assert verdict is None


def test_the_watchdog_flag_reaches_the_settings_and_must_exceed_the_ttl(
        capsys: pytest.CaptureFixture[str]) -> None:
    from swarm.controller.main import parse_args

    config = parse_args(["--insecure", "--leader-watchdog", "12", "--lease-ttl", "4"])
    assert config.leadership.watchdog == 12.0
    assert config.leadership.lease_ttl == 4
    assert parse_args(["--insecure"]).leadership.watchdog == 30.0
    with pytest.raises(SystemExit) as exited:
        parse_args(["--insecure", "--leader-watchdog", "5", "--lease-ttl", "5"])
    assert exited.value.code == 2
    assert "--leader-watchdog: must be longer than --lease-ttl" in capsys.readouterr().err
