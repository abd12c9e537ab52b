"""The pure parts of reading the mount table (swarm/host/mounts.py)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from swarm.host import mounts


@given(st.text(alphabet=st.sampled_from("ab/ \t\n\\x0"), max_size=30))
def test_escaping_round_trips(text: str) -> None:
    escaped = mounts.escape_mountinfo(text)
    assert not any(c in escaped for c in " \t\n")
    assert mounts.unescape_mountinfo(escaped) == text


def test_escaping_is_what_the_kernel_writes() -> None:
    assert mounts.escape_mountinfo("/run/a b\\c") == "/run/a\\040b\\134c"
    assert mounts.unescape_mountinfo("/plain/path") == "/plain/path"


def test_points_under_are_the_path_and_below_it_deepest_first() -> None:
    points = ["/", "/run", "/run/b/x", "/run/b", "/run/bb", "/run/b/x/y", "/run/b", "/srv/run/b"]
    assert mounts.points_under(points, Path("/run/b")) == ["/run/b/x/y", "/run/b/x", "/run/b"]
    assert mounts.points_under(points, Path("/run/b/")) == ["/run/b/x/y", "/run/b/x", "/run/b"]
    assert mounts.points_under(points, Path("/nothing")) == []
