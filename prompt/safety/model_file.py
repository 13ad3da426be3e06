"""A structural check of a fastText ``.bin`` file, before fastText itself reads it.

fastText's loader trusts the sizes written in the file: a truncated or damaged model can make it
allocate gigabytes from a garbage count (the process is killed, no error is raised) or read past
the end. This walks the layout fastText 0.9 writes (header, training arguments, dictionary, the
input and output matrices) and checks every count and size against the file's length, so such a
file is refused with a message instead. Pure code over the bytes; no fastText import.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

__all__ = ["ModelFileError", "check_fasttext_file"]

MAGIC = 793712314  # FASTTEXT_FILEFORMAT_MAGIC_INT32
MAX_VERSION = 12  # FASTTEXT_VERSION of the files fastText 0.9 writes (and the newest it reads)
_HEADER = struct.Struct("<ii")  # magic, version
_ARGS_BYTES = 12 * 4 + 8  # dim, ws, epoch, minCount, neg, wordNgrams, loss, model, bucket, minn, maxn, lrUpdateRate; t
_DICT_HEADER = struct.Struct("<iiiqq")  # size, nwords, nlabels, ntokens, pruneidx_size
_ENTRY_TAIL_BYTES = 8 + 1  # int64 count, int8 type, after the NUL-terminated word
_PRUNE_PAIR_BYTES = 8  # int32 key, int32 value
_MATRIX_HEADER = struct.Struct("<qq")  # rows, columns (a dense matrix of float32)
_FLOAT_BYTES = 4


class ModelFileError(ValueError):
    """The file is not a whole fastText model."""


class _Reader:
    def __init__(self, data: mmap.mmap | bytes) -> None:
        self._data = data
        self.pos = 0

    def take(self, size: int, what: str) -> int:
        """Skips ``size`` bytes holding ``what``; the offset they start at."""
        if size < 0 or self.pos + size > len(self._data):
            raise ModelFileError(
                f"truncated: {what} needs {size} bytes at offset {self.pos}, the file has {len(self._data)}"
            )
        start = self.pos
        self.pos += size
        return start

    def unpack(self, layout: struct.Struct, what: str) -> tuple[int, ...]:
        start = self.take(layout.size, what)
        return tuple(layout.unpack_from(self._data, start))

    def skip_word(self, index: int) -> None:
        end = self._data.find(b"\0", self.pos)
        if end < 0:
            raise ModelFileError(f"truncated: dictionary entry {index} has no end")
        self.pos = end + 1
        self.take(_ENTRY_TAIL_BYTES, f"dictionary entry {index}")


def _check_dense_matrix(reader: _Reader, name: str) -> None:
    (quantized,) = reader.unpack(struct.Struct("<?"), f"{name} matrix flag")
    if quantized:
        # A quantized (.ftz) matrix has a different layout; this project trains dense models only,
        # so the check stops here and leaves the rest to fastText.
        raise _Quantized
    rows, columns = reader.unpack(_MATRIX_HEADER, f"{name} matrix size")
    if rows < 0 or columns < 0:
        raise ModelFileError(f"{name} matrix has a negative size {rows}x{columns}")
    reader.take(rows * columns * _FLOAT_BYTES, f"{name} matrix of {rows}x{columns}")


class _Quantized(Exception):
    """The rest of the file is a quantized model."""


def _check(data: mmap.mmap | bytes) -> None:
    reader = _Reader(data)
    magic, version = reader.unpack(_HEADER, "header")
    if magic != MAGIC:
        raise ModelFileError("not a fastText model (wrong magic number)")
    if not 0 < version <= MAX_VERSION:
        raise ModelFileError(f"fastText file format version {version} is not supported (at most {MAX_VERSION})")
    reader.take(_ARGS_BYTES, "training arguments")
    size, nwords, nlabels, _ntokens, prune_size = reader.unpack(_DICT_HEADER, "dictionary header")
    if min(size, nwords, nlabels) < 0 or nwords + nlabels != size:
        raise ModelFileError(f"damaged dictionary header ({size} entries, {nwords} words, {nlabels} labels)")
    if nlabels == 0:
        raise ModelFileError("the model has no labels (not a classifier)")
    for index in range(size):
        reader.skip_word(index)
    reader.take(max(prune_size, 0) * _PRUNE_PAIR_BYTES, "pruned-word index")
    try:
        _check_dense_matrix(reader, "input")
        _check_dense_matrix(reader, "output")
    except _Quantized:
        return


def check_fasttext_file(path: str | Path) -> None:
    """Raise :class:`ModelFileError` unless ``path`` holds a whole fastText classifier. Blocking file I/O."""
    with open(path, "rb") as file:
        if file.seek(0, 2) == 0:
            raise ModelFileError("the file is empty")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            _check(data)
