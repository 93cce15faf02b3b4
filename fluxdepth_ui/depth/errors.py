"""The one exception type the depth core raises for input a user can fix."""

from ..errors import FluxDepthError


class DepthInputError(FluxDepthError, ValueError):
    """A depth file or setting that cannot be turned into a control map.

    The message is one line meant for the artist: what is wrong and what to do about it.
    """
