"""Images on a node, split as containerd splits them:

    reference   image references and registry names (pure)
    platforms   this node's platform, as image indexes name it (pure)
    config      what the runtime needs of an image: layers and config (pure)
    archive     unpacking layer tarballs into overlayfs lower directories
    skopeo      the pulling tool's failures, one clear line each (pure)
    gc          garbage-collection settings, the pure plan and the loop
    store       the ImageStore: pull once, unpack once per layer, share,
                collect (its on-disk layout is described there)

The names below are the package's interface; the rest of the agent imports
only these.
"""

from .archive import LayerError, unpack_layer
from .config import Healthcheck, Image
from .errors import ImageError
from .gc import GcImage, GcPlan, ImageGarbageCollector, ImageGcSettings, InUse, plan_gc
from .platforms import Platform, host_architecture
from .reference import DEFAULT_REGISTRY, Reference, normalize_reference, parse_reference
from .store import ImageStore

__all__ = [
    "DEFAULT_REGISTRY",
    "GcImage",
    "GcPlan",
    "Healthcheck",
    "Image",
    "ImageError",
    "ImageGarbageCollector",
    "ImageGcSettings",
    "ImageStore",
    "InUse",
    "LayerError",
    "Platform",
    "Reference",
    "host_architecture",
    "normalize_reference",
    "parse_reference",
    "plan_gc",
    "unpack_layer",
]
