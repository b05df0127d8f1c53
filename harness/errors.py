class HarnessError(Exception):
    """A user-facing error: the message alone tells what is wrong and where.

    The app prints it on one line and exits non-zero instead of showing a stack trace.
    """


class DataError(HarnessError):
    """A data file is missing or does not have the expected schema."""

    def __init__(self, path, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


class ConfigError(HarnessError):
    pass
