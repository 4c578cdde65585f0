"""The AMIR network in pure torch: no file I/O here."""
from .amir import AMIR
from .config import CONFIGS, AmirConfig, get_config
from .restormer import set_reference_mode

__all__ = ["AMIR", "AmirConfig", "CONFIGS", "get_config", "set_reference_mode"]
