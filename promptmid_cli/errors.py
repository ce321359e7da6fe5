"""Errors that map onto the documented exit codes (see README, 'Exit codes')."""

EXIT_OK = 0
EXIT_NOT_REGISTERED = 1  # ran, but the matches do not support a reliable fit
EXIT_BAD_INPUT = 2  # bad usage or bad input


class PromptmidError(Exception):
    """An error with a one-line message and an exit code."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class BadInput(PromptmidError):
    exit_code = EXIT_BAD_INPUT


class RegistrationFailed(PromptmidError):
    """Raised when the pipeline ran but could not register; carries the partial result."""

    exit_code = EXIT_NOT_REGISTERED

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result
