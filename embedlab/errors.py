"""User-facing errors: the CLI prints ``str(err)`` as one line and exits non-zero."""


class EmbedlabError(Exception):
    """An error caused by the user's input (bad name, missing file, wrong shape...).

    The message must be one self-contained line that says what is wrong and, where possible, how to fix it.
    """


class BusyError(EmbedlabError):
    """Another embedlab process holds the lock of the folder this one would write (a run being trained, results
    being written). A grid that meets one comes back to that item later instead of failing."""


class EmbedlabWarning(UserWarning):
    """Something in the input was ignored or guessed (e.g. an unknown key in an ``.npz``): the work goes on, and the
    CLI prints the message as one line ``embedlab: warning: ...`` on stderr."""
