"""One exception type for problems the user can fix (bad config, missing file, ...).

The CLI turns it into a one-line message on stderr and exit status 2; anything else is a bug and keeps its traceback.
"""


class LumiError(Exception):
    """A user-facing error: the message alone must say what is wrong and where."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound exactly like Ctrl-C (staging directories removed, locks released) but reported as itself:
    a scheduler's or ``kill``'s stop is not a user's interrupt. The CLI exits with 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
