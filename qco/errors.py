"""The one kind of error a user sees without a traceback: their config cannot run as written."""


class QcoError(Exception):
    """A user mistake or a refused combination. Each line of the message names the key, the value,
    what is allowed and how to fix it; __main__ prints it as is and exits with EXIT_USER_ERROR."""

    def __init__(self, lines):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


EXIT_USER_ERROR = 2
