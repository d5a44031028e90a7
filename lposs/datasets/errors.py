"""The one error type of the datasets package, and the reading of the text files it names in its messages."""

from pathlib import Path


class DatasetError(ValueError):
    """A dataset key, folder, file or label that is not what the benchmark expects."""


def read_text_file(path: Path, what: str) -> str:
    """The text of the UTF-8 file ``path`` (a byte-order mark allowed and dropped).

    Raises:
        OSError: the file cannot be read.
        DatasetError: ``"{what} {path}: not UTF-8 text (byte 0x.. on line N)..."``, one line.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DatasetError(
            f"{what} {path}: not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); save it as UTF-8"
        ) from None
