"""Errors of the image store, meant for the task's status."""

from __future__ import annotations


class ImageError(Exception):
    """An image could not be made available; the message is one line meant for
    the task's status ("image not found: …", "registry … unreachable: …",
    "image … failed verification: …", "access to … denied: …")."""
