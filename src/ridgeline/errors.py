"""One exception family. The CLI prints any RidgelineError as one line, never a traceback;
``first_line`` keeps the foreign errors they quote to one line too."""


class RidgelineError(Exception):
    """A user-facing error whose message is a single line naming the bad value and the fix."""


class HParamError(RidgelineError, ValueError):
    """A hyperparameter outside its allowed range."""


class DataError(RidgelineError):
    """CIFAR-10 could not be found, downloaded, or verified."""


class TuneError(RidgelineError):
    """A tune that cannot start: bad start point, bounds, order or study."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name if it has none): driver and OS errors
    can span many lines, and a RidgelineError that quotes one must stay on one line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
