"""Local files looked at before anything reads them: type first, then size.

tensorstore's file driver (and `open()`) block forever on a FIFO and read a character device such
as `/dev/zero` without end, so every local file streamdiff reads is `stat`ed first (following
symlinks): anything but a regular file is refused with one line naming it. Directories whose files
tensorstore reads on its own (OCDBT data files, per-array chunk files) are audited with
`os.scandir`, which reports each entry's type without opening it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator

from ..errors import CorruptCheckpointError
from ..units import human_bytes

#: Deepest directory nesting walked (chunk keys nest at most one level per dimension, 32 at most).
MAX_DEPTH = 40

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def check_file(path: str, display: str, max_bytes: int | None = None) -> int | None:
    """Size of the regular file at `path`, None when it does not exist; refuses anything else, and
    regular files over `max_bytes`."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise CorruptCheckpointError(f"{display}: a broken symbolic link") from None
        return None
    except OSError as e:
        raise CorruptCheckpointError(f"{display}: cannot read it ({e.strerror})") from e
    except ValueError:  # a NUL byte: a name from hostile metadata, no file can have it
        raise CorruptCheckpointError(f"{display!r}: not a valid file name") from None
    if not stat.S_ISREG(st.st_mode):
        raise CorruptCheckpointError(f"{display}: {_kind(st.st_mode)}, not a regular file; refusing to read it")
    if max_bytes is not None and st.st_size > max_bytes:
        raise CorruptCheckpointError(
            f"{display}: {human_bytes(st.st_size)}, over the {human_bytes(max_bytes)} limit for a metadata file"
        )
    return st.st_size


def walk_files(root: str, display: str, wanted: Callable[[str], bool] = lambda rel: True) -> Iterator[tuple[str, int]]:
    """(relative path, size) of every file below `root` that `wanted` accepts, refusing any such
    entry that is not a regular file; directories are descended into, symlinks followed."""
    stack = [("", 0)]
    while stack:
        rel, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CorruptCheckpointError(f"{display}/{rel}: directories nested more than {MAX_DEPTH} deep")
        try:
            it = os.scandir(os.path.join(root, rel))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise CorruptCheckpointError(f"{display}/{rel}: cannot list it ({e.strerror})") from e
        except ValueError:  # a NUL byte in a name taken from metadata
            raise CorruptCheckpointError(f"{display!r}: not a valid directory name") from None
        with it:
            for entry in it:
                sub = rel + entry.name
                if entry.is_dir():
                    stack.append((sub + "/", depth + 1))
                    continue
                if not wanted(sub):
                    continue
                if not entry.is_file():
                    check_file(entry.path, f"{display}/{sub}")  # raises with the entry's kind
                yield sub, entry.stat().st_size
