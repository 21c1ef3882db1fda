"""geoloc: where in a city was this street-level photo taken?"""

__version__ = "0.1.0"


class GeolocError(Exception):
    """A user-facing problem (bad input, missing file): the CLI prints it as one line, no traceback."""
