"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class ActlabError(Exception):
    """A problem with the user's input or setup; the message names the fix.

    `param` names the Python parameter at fault (e.g. "padding_side"), so a
    shell can name its own spelling of it (the CLI adds the matching flag)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
