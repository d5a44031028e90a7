"""The one error type of the datasets package."""


class DatasetError(ValueError):
    """A dataset key, folder, file or label that is not what the benchmark expects."""
