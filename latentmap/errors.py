"""The one exception type users see: its message is the whole story, one line, no traceback."""


class LatentmapError(Exception):
    """A user-facing error: bad input, missing file, unknown name. The CLI prints it and exits 2."""


class UnknownNameError(LatentmapError):
    """A generator, encoder, prior or space name that no plugin provides."""
