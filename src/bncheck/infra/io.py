"""Output files: checked before any work, written atomically after. One rule, one place.

>>> import tempfile, pathlib
>>> from bncheck.infra.io import check_output_path, write_text_atomic
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> path = check_output_path(folder / "report.json", "--json")
>>> _ = write_text_atomic(path, "{}")
>>> path.read_text()
'{}'

Every command that writes a file calls :func:`check_output_path` for it *before* doing any work
(so a missing or read-only folder is reported in one paragraph at once, not after a long run),
then writes it with :func:`write_atomic` (or its text/JSON forms): each file goes to a temporary
sibling first and is moved into place with ``os.replace`` only once every file of the set is
complete, so a failed or interrupted run leaves earlier files byte-for-byte as they were. Files
get the mode ``open()`` would give them (``0o666`` less the user's umask), not ``mkstemp``'s 0600.

Only regular files are replaced. A path that is a device node or a FIFO (``--json /dev/stdout``)
is written through, in place; a symlink is followed: the file it points to is replaced and the
link stays a link. A name the file system refuses (too long) is an error naming the argument.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bncheck.errors import OutputError

__all__ = ["check_output_path", "describe_path", "check_distinct", "hold_folder",
           "write_atomic", "write_text_atomic", "write_json_atomic", "file_mode",
           "ctrl_c_deferred"]


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_output_path(path: str | os.PathLike[str], name: str, *,
                      suffix: str | None = None) -> Path:
    """``path`` as a :class:`~pathlib.Path` if a file can be written there, else an error.

    Checks, in order: that ``path`` is not a directory, its ``suffix`` (when given), that its folder
    exists, and that a file can really be created in that folder (a probe file is created and
    removed: this catches read-only folders and read-only file systems even for root, where
    ``os.access`` says yes).

    Raises:
        OutputError: (exit code 2 in the CLI) with ``name=path`` and what is wrong.
    """
    p = Path(path)
    shown = f"{name}={_short(str(p))!r}"
    if "\x00" in str(p):
        raise OutputError(f"Expected {name} to be a file path, received {shown} (a NUL byte)")
    try:
        st = os.stat(p)  # follows a symlink: its target is what gets written
    except (FileNotFoundError, NotADirectoryError):  # the folder checks below say which
        st = None
    except OSError as e:  # a name too long, a loop of symlinks, a folder that is a file...
        raise OutputError(f"Cannot write {shown}: {e.strerror or type(e).__name__}") from None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        if not os.access(p, os.W_OK):  # a device, a FIFO: written through, in place
            raise OutputError(f"Cannot write {shown}: it is {_kind(st.st_mode)} that this "
                              f"user cannot write")
        return p
    if p.is_dir():
        raise OutputError(f"Expected {name} to be a file path, received {shown}, "
                          f"which is a directory")
    if suffix is not None and p.suffix != suffix:
        raise OutputError(f"Expected {name} to end in {suffix}, received {shown}")
    folder = _destination(p).parent
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise OutputError(f"Expected {name} in an existing folder, received {shown} "
                          f"(folder {str(folder)!r} {what})")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name[:100]}.", suffix=".probe", dir=folder)
    except OSError as e:
        raise OutputError(f"Cannot write {shown}: folder {str(folder)!r} is not writable "
                          f"({e.strerror or type(e).__name__})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return p


def write_atomic(files: Mapping[Path, bytes]) -> None:
    """Write every file to a temporary sibling first, then move each into place.

    Nothing is replaced until every temporary file is complete, so a failure while writing
    leaves existing files byte-for-byte as they were; ``os.replace`` never leaves a file partly
    overwritten.

    Raises:
        OutputError: a destination folder is missing or a file cannot be written (the message
            names the file and the operating system's reason).
    """
    files = dict(files)
    for path in list(files):
        if _is_special(path):  # a device node or FIFO (/dev/stdout): written through it
            _write_through(Path(path), files.pop(path))
    files = {_destination(Path(p)): data for p, data in files.items()}
    for path in files:
        if not Path(path).parent.is_dir():
            raise OutputError(f"Expected an existing folder for {str(path)!r}, received folder "
                              f"{str(Path(path).parent)!r} (no such folder)")
    mode = file_mode()
    temps: dict[Path, str] = {}
    try:
        for path, data in files.items():
            path = Path(path)
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp",
                                           dir=path.parent)
                temps[path] = tmp
                os.chmod(tmp, mode)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as e:
                raise OutputError(f"Cannot write {_short(str(path))!r}: "
                                  f"{e.strerror or type(e).__name__}") from None
        with ctrl_c_deferred():  # all files move into place, or none: Ctrl-C waits until after
            for path, tmp in temps.items():
                try:
                    os.replace(tmp, path)
                except OSError as e:
                    raise OutputError(f"Cannot write {_short(str(path))!r}: "
                                      f"{e.strerror or type(e).__name__}") from None
    finally:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def check_distinct(outputs: Mapping[str, str | os.PathLike[str] | None]) -> None:
    """Two outputs of one run never share a file (the second would overwrite the first).

    Args:
        outputs: what names each output (an option, "the plot") -> its path (``None``: none).

    Raises:
        OutputError: naming both outputs and the file they share.
    """
    seen: dict[str, str] = {}
    for name, path in outputs.items():
        if path is None:
            continue
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise OutputError(f"Expected {seen[key]} and {name} to be different files, both are "
                              f"{_short(str(path))!r}: the second would overwrite the first")
        seen[key] = name


#: Folders this process holds (:func:`hold_folder`): their open descriptors, kept until exit.
_held: dict[str, int] = {}


def hold_folder(folder: Path, name: str) -> None:
    """Claim ``folder`` for this process's run until it exits: a second run into the same folder
    is refused while the first runs, instead of the two mixing their files. Creates the folder.
    The claim is an advisory lock (``flock``) on the folder itself (no file is left in it),
    released by the operating system when the process ends, however it ends; where there is
    no ``flock`` (Windows) nothing is claimed.

    Raises:
        OutputError: another process holds it, or it cannot be created.
    """
    try:
        import fcntl
    except ImportError:
        return
    key = os.path.realpath(folder)
    if key in _held:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise OutputError(f"Cannot write {name}={_short(str(folder))!r}: "
                          f"{e.strerror or type(e).__name__}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputError(f"{name}={_short(str(folder))!r} is in use by another bncheck run "
                          f"(it writes its files there now); wait for it to end, or give "
                          f"another {name}") from None
    _held[key] = fd


def _destination(path: Path) -> Path:
    """Where writing ``path`` lands: a symlink is followed (the file it points to is replaced,
    the link stays a link); anything else is ``path`` itself."""
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def _is_special(path: str | os.PathLike[str]) -> bool:
    """An existing path that is neither a regular file nor a folder (a device, a FIFO, a
    socket), the symlinks to one included."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _write_through(path: Path, data: bytes) -> None:
    """Write to a device or FIFO in place: replacing it with a file would destroy it."""
    try:
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError as e:
        raise OutputError(f"Cannot write {_short(str(path))!r}: "
                          f"{e.strerror or type(e).__name__}") from None


def describe_path(path: Path) -> str | None:
    """What keeps ``path`` from being read as an input file, when it is not a missing file, a
    folder or a regular file: ``"'p' is a FIFO, not a regular file"``, ``"... File name too
    long"``; ``None`` otherwise."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot read {_short(str(path))!r}: {e.strerror or type(e).__name__}"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return f"{_short(str(path))!r} is {_kind(mode)}, not a regular file"


def _kind(mode: int) -> str:
    for test, text in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return text
    return "not a regular file"


def _short(text: str, limit: int = 200) -> str:
    """A path as messages show it: a very long one is cut in the middle."""
    return text if len(text) <= limit else f"{text[:90]}...{text[-90:]} ({len(text)} chars)"


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """SIGINT held back for the block (files that must change together, and what reports
    them), delivered when it ends; the block must be short."""
    sigmask = getattr(signal, "pthread_sigmask", None)
    if sigmask is None:  # Windows: no signal masks
        yield
        return
    old = sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        sigmask(signal.SIG_SETMASK, old)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    p = Path(path)
    write_atomic({p: text.encode("utf-8")})
    return p


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON (with a final newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")
