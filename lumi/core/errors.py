"""One exception type for problems the user can fix (bad config, missing file, ...).

The CLI turns it into a one-line message on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""


class LumiError(Exception):
    """A user-facing error: the message alone must say what is wrong and where."""

    exit_code = 2
