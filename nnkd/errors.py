"""User-facing errors: the CLI prints their message and exits with status 2."""


class NNKDError(Exception):
    """An input problem the user can fix; the message names the file, case or field."""
