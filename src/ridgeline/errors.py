"""One exception family. The CLI prints any RidgelineError as one line, never a traceback."""


class RidgelineError(Exception):
    """A user-facing error whose message is a single line naming the bad value and the fix."""


class HParamError(RidgelineError, ValueError):
    """A hyperparameter outside its allowed range."""


class DataError(RidgelineError):
    """CIFAR-10 could not be found, downloaded, or verified."""


class TuneError(RidgelineError):
    """A tune that cannot start: bad start point, bounds, order or study."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (the form every one-line error takes)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
