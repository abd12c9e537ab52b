"""The agent's container runtime: the Runtime protocol (base), pure OCI config
building (spec), and its implementation on runc + conmon (runc), with the
rootfs (overlayfs) and network-namespace helpers it uses."""

from .base import (
    ContainerError,
    ContainerState,
    ContainerStatus,
    ImageConfig,
    ImageInput,
    NoSuchContainer,
    PayloadFile,
    RejectError,
    Runtime,
)
from .runc import RuncRuntime, RuncSettings
from .spec import stop_signal

__all__ = [
    "ContainerError",
    "ContainerState",
    "ContainerStatus",
    "ImageConfig",
    "ImageInput",
    "NoSuchContainer",
    "PayloadFile",
    "RejectError",
    "RuncRuntime",
    "RuncSettings",
    "Runtime",
    "stop_signal",
]
