"""The one kind of error a user sees without a traceback: their config cannot run as written."""

import errno

EXIT_USER_ERROR = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT
# an OSError with one of these means "cannot write there": a user's folder, not a bug
WRITE_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EEXIST, errno.EDQUOT)


class QcoError(Exception):
    """A user mistake or a refused combination. Each line of the message names the key, the value,
    what is allowed and how to fix it; __main__ prints it as is, with no traceback, and exits."""

    status = "refused"  # what results.json records
    exit_code = EXIT_USER_ERROR

    def __init__(self, lines):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


class CannotRun(QcoError):
    """The combination passed the checks and the rules, and a library could not run it: one line, a failed run."""

    status = "failed"
    exit_code = 1


class OutOfMemory(QcoError):
    """The run ran out of GPU or host memory: which phase, the peak, what would fit."""

    status = "failed"
    exit_code = EXIT_OUT_OF_MEMORY
