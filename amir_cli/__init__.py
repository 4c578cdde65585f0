"""amir: all-in-one medical image restoration with the AMIR task-adaptive routing network."""

from ._version import __version__


def load_model(source=None, device="cpu"):
    """The eval-mode AMIR network for a registry name, a `.safetensors` file or a published `.pth`.

    It maps a (B, 1, H, W) float tensor normalised to [0, 1] to the restored tensor; any H, W >= 9.
    """
    from .weights import load_model as _load

    return _load(source, device)


def restore_array(array, task, **options):
    """Restore a 2-D or 3-D numpy array in physical units (see `amir_cli.restore.restore_array`)."""
    from .restore import restore_array as _restore

    return _restore(array, task, **options)


__all__ = ["__version__", "load_model", "restore_array"]
