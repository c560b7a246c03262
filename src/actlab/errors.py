"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class ActlabError(Exception):
    """A problem with the user's input or setup; the message names the fix."""
