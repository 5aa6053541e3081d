"""User-facing errors: the CLI prints ``str(err)`` as one line and exits non-zero."""


class EmbedlabError(Exception):
    """An error caused by the user's input (bad name, missing file, wrong shape...).

    The message must be one self-contained line that says what is wrong and, where possible, how to fix it.
    """
