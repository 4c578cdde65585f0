"""The AMIR network in pure torch: no file I/O here."""
from .amir import AMIR
from .config import CONFIGS, AmirConfig, get_config

__all__ = ["AMIR", "AmirConfig", "CONFIGS", "get_config"]
