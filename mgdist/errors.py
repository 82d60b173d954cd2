"""Every error that mgdist reports to a user: each message is one line naming what is at fault."""


class MgdistError(Exception):
    """Base of mgdist's own errors: the job prints the message and exits with status 2."""


class DataError(MgdistError, ValueError):
    """Bad data or an unreachable dataset; names the file, row group, column, row or value."""


class CheckpointError(MgdistError, RuntimeError):
    """A checkpoint cannot be written, read, or used for this run; says which and why."""


class ModelError(MgdistError, TypeError):
    """A model that does not keep the contract of docs/models.md, or cannot be imported or rebuilt."""


class TrainingError(MgdistError, RuntimeError):
    """Training cannot start or go on; says why."""


class NonFiniteError(TrainingError):
    """A worker's gradient or loss holds NaN or inf."""


class BadMessage(TrainingError):
    """A worker's answer cannot be right (its row count, its timing): a fault of that worker's code."""


class Unreachable(CheckpointError):
    """Storage still failed with transient errors after retrying: the checkpoint may be fine."""


class SaveFailed(CheckpointError):
    """A save failed (after retrying for its time budget); the checkpoints before it are intact."""
