"""The AMIR network in torch, with CPU kernels of its own (`native`): no image I/O here. The
configurations import without torch (the command line's help lists their names); the network
itself loads torch when first named."""
from .config import CONFIGS, AmirConfig, get_config

__all__ = ["AMIR", "AmirConfig", "CONFIGS", "get_config"]


def __getattr__(name: str):
    if name == "AMIR":
        from .amir import AMIR

        return AMIR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
