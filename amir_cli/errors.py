"""The few exception types that the command line turns into one-line messages and exit codes."""


class AmirError(Exception):
    """Any failure that the user can act on; its message is printed as one line."""


class BadInputError(AmirError):
    """An image, folder or option value that cannot be used."""


class WeightsError(AmirError):
    """Weights that are missing, tampered with or do not fit the network."""


class DeviceError(AmirError):
    """A requested device or precision that this machine cannot provide."""
