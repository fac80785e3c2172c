"""The one error type the CLI turns into a single line and exit code 2."""


class FlywheelError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class DatabaseHeld(FlywheelError):
    """The DuckDB file is open for writing in another process (`flywheel up`): the read and admin commands go
    through that service's admin API instead (`infra.remote`)."""
