"""Read a checkpoint straight out of the official ``.tar.gz``, without extracting it to disk.

A gzip stream cannot be read at random, so :class:`TarballReader` streams: it finds the
``.index`` member (stopping there when it comes before the data, as in the official tarballs
and ours), parses it with the tensor-bundle reader, and then serves tensors from the data
member(s) as the stream passes them. The converter asks for tensors in :meth:`read_order`
(data-file order), so one pass over the archive suffices; a tensor behind the current position
restarts the stream (correct, only slower). Every tensor's crc32c is checked as with files.
"""
from __future__ import annotations

import os
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import ConversionError, first_line
from .bundle import BundleReader, data_filename


def corrupt_tarball_error(tarball: "os.PathLike", detail: str, on_corrupt=None) -> ConversionError:
    """The one-line error of a damaged tarball (``on_corrupt(detail)``'s for a cached download)."""
    if on_corrupt is not None:
        return on_corrupt(f"corrupt or truncated: {detail}")
    return ConversionError(f"corrupt or truncated tarball {tarball} ({detail}); delete it and download it again")


_SEP = "!/"  # tarball!/member in names shown to the user
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError)
_SKIP_CHUNK = 1 << 22


class TarballReader(BundleReader):
    """The :class:`~converter.sources.readers.CheckpointReader` of a checkpoint inside a tarball."""

    def __init__(self, tarball: os.PathLike, on_corrupt=None):
        """``on_corrupt(detail)``: the error for damaged bytes (a cached download's sets it aside:
        converter.sources); by default "corrupt ...; delete it and download it again"."""
        self.tarball = Path(tarball)
        self._on_corrupt = on_corrupt
        self._files = {}
        self._stream: Optional[tarfile.TarFile] = None
        self._member_file = None  # the open data member being read
        self._member_name: Optional[str] = None
        self._pos = 0  # position inside that member
        self._seen: Dict[str, int] = {}  # member name -> its order in the archive
        index_name, data = self._find_index()
        inner = index_name[: -len(".index")]
        self.prefix = f"{self.tarball}{_SEP}{inner}"
        self._inner_prefix = inner
        self._index_path = f"{self.tarball}{_SEP}{index_name}"
        self._load_index(data)  # data members are checked as the stream reaches them

    # ------------------------------------------------------------------ finding the index

    def _open(self) -> tarfile.TarFile:
        try:
            return tarfile.open(self.tarball, mode="r|*")
        except FileNotFoundError:
            raise ConversionError(f"{self.tarball} does not exist") from None
        except _TAR_ERRORS as e:
            raise self._corrupt(e) from None

    def _corrupt(self, e: BaseException) -> ConversionError:
        return corrupt_tarball_error(self.tarball, first_line(e), self._on_corrupt)

    def _damaged(self, what: str, advice: str) -> ConversionError:
        if self._on_corrupt is not None:
            return self._on_corrupt(what)
        return super()._damaged(what, advice)

    def _find_index(self) -> Tuple[str, bytes]:
        """One streaming pass up to the (single) .index member; returns its name and bytes."""
        indexes: List[Tuple[str, bytes]] = []
        stream = self._open()
        try:
            for i, member in enumerate(stream):
                self._seen[member.name] = i
                base = PurePosixPath(member.name).name
                if member.isfile() and base.endswith(".index") and not base.startswith("._") and base != ".index":
                    if member.size > 1 << 30:
                        raise ConversionError(f"{self.tarball}: {member.name} is {member.size} bytes, "
                                              f"too large for a checkpoint index")
                    f = stream.extractfile(member)
                    indexes.append((member.name, f.read() if f is not None else b""))
                    if not any(_is_data_member(n, member.name) for n in self._seen):
                        break  # index before its data: the data follows, read it in the same order
        except _TAR_ERRORS as e:
            raise self._corrupt(e) from None
        finally:
            stream.close()
        if not indexes:
            raise ConversionError(f"tarball {self.tarball} holds no TensorFlow checkpoint (no .index member); "
                                  f"use the official checkpoint tarball")
        if len(indexes) > 1:
            names = ", ".join(n for n, _ in indexes[:4])
            raise ConversionError(f"tarball {self.tarball} holds {len(indexes)} checkpoints ({names}); "
                                  f"extract it and pass the prefix you want as --checkpoint")
        return indexes[0]

    # ------------------------------------------------------------------ reading

    def read_order(self, names: Sequence[str]) -> List[str]:
        """``names`` in the order the archive holds their bytes (the converter reads in this order)."""
        def key(name: str):
            e = self._entry(name)
            member = self._member_for(e.shard)
            return (self._seen.get(member, len(self._seen) + e.shard), e.offset)

        return sorted(names, key=key)

    def _member_for(self, shard: int) -> str:
        return data_filename(self._inner_prefix, shard, self._num_shards)

    def _read_into(self, shard: int, path: str, offset: int, raw) -> None:
        member = self._member_for(shard)
        try:
            if self._member_name == member and self._pos > offset:
                self._close_stream()  # behind us in this member: start the archive over
            if self._member_name != member:
                self._seek_member(member)
            self._skip(offset - self._pos)
            view = memoryview(raw).cast("B")
            done = 0
            while done < len(view):
                got = self._member_file.readinto(view[done:])
                if not got:
                    raise EOFError
                done += got
            self._pos += done
        except (EOFError, ConversionError):
            raise
        except _TAR_ERRORS as e:
            self._close_stream()
            raise self._corrupt(e) from None

    def _seek_member(self, member: str) -> None:
        """Position the stream at the start of ``member``: forward, or once more from the start."""
        for _ in range(2):
            if self._stream is None:
                self._stream = self._open()
            for m in self._stream:
                self._seen.setdefault(m.name, len(self._seen))
                if m.name == member:
                    if not m.isfile():
                        raise ConversionError(f"{self.tarball}{_SEP}{member} is not a regular file; "
                                              f"use the official checkpoint tarball")
                    self._member_file = self._stream.extractfile(m)
                    self._member_name, self._pos = member, 0
                    return
            self._close_stream()  # end of the archive: it may be behind us
        raise self._damaged(f"checkpoint data file {self.tarball}{_SEP}{member} is missing from the tarball "
                            f"(the index refers to it)", "download it again")

    def _skip(self, n: int) -> None:
        while n > 0:
            got = len(self._member_file.read(min(n, _SKIP_CHUNK)))
            if not got:
                raise EOFError
            n -= got
            self._pos += got

    def _close_stream(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except _TAR_ERRORS:
                pass
        self._stream = self._member_file = self._member_name = None
        self._pos = 0

    def close(self) -> None:
        """Close the archive stream."""
        self._close_stream()

    def __repr__(self) -> str:
        return f"TarballReader({self.prefix!r}: {len(self._names)} tensors, {self._num_shards} data file(s))"


def _is_data_member(name: str, index_name: str) -> bool:
    prefix = index_name[: -len(".index")]
    return re.fullmatch(re.escape(prefix) + r"\.data-\d{5}-of-\d{5}", name) is not None

