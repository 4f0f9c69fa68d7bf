"""The one exception type that the CLI turns into a single line and exit code 2.

Raise `UsageError` for anything the *user* got wrong (a bad flag, a missing file, a
corrupt checkpoint, data with NaNs). The message must name what was wrong and what
to do; the CLI prints `error: <message>` and exits 2 with no traceback.
"""


class UsageError(Exception):
    """A bad input: the message is one line naming the problem and the fix."""
