"""Errors a training run reports to its caller (the CLI prints them; a study marks the trial failed)."""


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the run diverged (message: where and what value)."""
