"""One exception type for every user mistake, so callers and the CLI can catch it in one place."""


class CharsdkError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class ModelError(CharsdkError):
    """A model directory that is missing, incomplete, corrupt or inconsistent."""


class InputError(CharsdkError, ValueError):
    """An argument or seed text the model cannot use; `argument` names the argument, when there is one
    (the message starts with it), so that the command line can name its own flag instead."""

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument
