"""Writing files so that nothing is ever half-written, replaced by mistake or left behind:
:func:`atomic_write`, and the checks that go before it (:func:`check_writable`,
:func:`file_identity`).

Every file bpgpu writes (models, checkpoints, JSON records, plots, benchmark reports, the README
block) goes through :func:`atomic_write`: the data goes to a temporary file in the target's
directory, is fsynced, and is renamed into place, and the directory is fsynced after the rename.
A crash, ``kill -9`` or a full disk leaves the previous file complete, and a write that fails
removes its temporary file.

The rules for the path (the same in the API and on the command line):

- a symbolic link is followed: the file it points to is replaced (created, for a dangling link)
  and the link itself stays, as shell redirection does;
- something that exists and is not a regular file (a directory, a device such as ``/dev/null``,
  a FIFO, a socket) is refused, never replaced;
- an empty name is refused;
- every error is a :class:`WriteError` (an ``OSError``) whose message names the path the caller
  gave, never the temporary file.

Signals: while a file is being written, SIGINT, SIGTERM and SIGHUP that would end the process
without running Python code (their default action) first remove the temporary file, then end the
process as they would have; a signal whose handler raises (Ctrl-C's ``KeyboardInterrupt``, the
training guard's second signal) removes it too, with the signals held off while it is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import threading

__all__ = ["atomic_write", "check_writable", "file_identity", "WriteError"]

#: Signals whose default action would end the process in the middle of a write.
_ENDING = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                if hasattr(signal, name))
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


class WriteError(OSError):
    """A file could not be written. ``filename`` is the path the caller gave; the message names
    it (``str(error)``: ``"cannot write PATH: REASON"``) and ``errno`` says why (``ENOSPC``: the
    disk is full)."""

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


def _kind(mode) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def _target(path: str) -> str:
    """The file that writing ``path`` replaces: ``path`` with symbolic links followed. Raises
    WriteError for an empty name, a link loop, or something that is not a regular file."""
    if not path:
        raise WriteError(errno.ENOENT, "an empty file name", path)
    target = os.path.realpath(path)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:                                   # ELOOP, EACCES, ...
        raise WriteError(exc.errno, exc.strerror or str(exc), path) from None
    if not stat.S_ISREG(mode):
        link = f" (a link to {target})" if target != os.path.abspath(path) else ""
        raise WriteError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EEXIST,
                         f"it exists and is {_kind(mode)}{link}; only regular files are "
                         "written", path)
    return target


def _create_temp(directory):
    """Open a new, empty temporary file in ``directory``; return (fd, path).

    It is created with mode 0o666 and the kernel applies the process umask, as for any new file
    (0644 under the usual 022). ``tempfile.mkstemp`` creates 0600, and that mode would survive the
    rename and make every saved file private by accident.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".bpgpu-{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", directory)


def _fsync_directory(directory):
    """Make a rename in ``directory`` durable (POSIX: fsync the directory itself)."""
    if os.name == "nt":   # no directory handles to sync; NTFS journals the rename
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # a few network and FUSE file systems cannot fsync a directory: the file itself is
        # complete and synced, and the rename's durability is then up to them
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def check_writable(path) -> str:
    """Check now that :func:`atomic_write` could write ``path``; return the file it would
    replace (links followed).

    Beyond the rules of the path (see the module docstring), the directory must exist and a
    temporary file must really be created and renamed there (``/proc``, ``/sys``, a read-only
    mount or a directory without write permission fail here, not after a long run).

    Raises
    ------
    WriteError
        Naming ``path`` and what is wrong.
    """
    path = os.fspath(path)
    target = _target(path)
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise WriteError(errno.ENOENT, f"directory {directory} does not exist", path)
    tmp = moved = None
    try:
        fd, tmp = _create_temp(directory)
        os.close(fd)
        moved = tmp[:-4] + ".probe"
        os.replace(tmp, moved)
        tmp = None
    except OSError as exc:
        raise WriteError(exc.errno, f"cannot create and rename a file in {directory} "
                                    f"({exc.strerror or exc})", path) from None
    finally:
        for leftover in (tmp, moved):
            if leftover is not None:
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
    return target


def file_identity(path):
    """What two paths share when they name the same file: the device and inode of an existing
    file (so hard and symbolic links compare equal), else the absolute path with links
    followed."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.normcase(os.path.realpath(path)))
    return ("inode", st.st_dev, st.st_ino)


class _Ended(BaseException):
    """Internal: a signal whose default action ends the process arrived during a write."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_end_after_cleanup():
    """Within the block, the signals of :data:`_ENDING` left at their default action (end the
    process) raise :class:`_Ended` instead; on the way out the default is back and the signal is
    delivered again, so the process ends as it would have -- after the ``except`` clauses inside
    the block removed what they must. Main thread only (elsewhere signals keep their effect)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def ended(signum, frame):
        raise _Ended(signum)

    for sig in _ENDING:
        try:
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, ended)
        except (ValueError, OSError):
            pass
    try:
        yield
    except _Ended as exc:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        previous = {}
        signal.raise_signal(exc.signum)
        raise          # only if the default action did not end the process (it always does)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_held():
    """Hold off :data:`_ENDING` signals for the block (delivered when it ends)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _ENDING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def atomic_write(path, write) -> str:
    """Create ``path`` by calling ``write(binary_file)`` on a temporary file, then renaming it.

    Either the whole new file is there afterwards or the old state is untouched (no half-written
    output, whatever ``write`` raises, and no temporary file left, even when a signal ends the
    process during the write). The data is fsynced before the rename and the directory after it,
    so once this returns the new file survives a crash or power cut. A symbolic link is followed
    (its target is replaced, the link stays); anything that exists and is not a regular file is
    refused.

    Permissions: a new file gets the mode any new file gets under the process umask (0644 under
    the usual 022, 0600 under 077). Replacing an existing file keeps that file's permission bits,
    so a model its owner made private stays private when it is saved again.

    Returns
    -------
    str
        ``path`` as given.

    Raises
    ------
    WriteError
        The path is refused, or the operating system failed the write (``errno`` says why: e.g.
        ``ENOSPC``); the message names ``path``.
    """
    path = os.fspath(path)
    target = _target(path)
    directory = os.path.dirname(target)
    try:
        keep_mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        keep_mode = None
    with _signals_end_after_cleanup():
        try:
            fd, tmp = _create_temp(directory)
        except OSError as exc:
            raise WriteError(exc.errno, exc.strerror or str(exc), path) from None
        try:
            with os.fdopen(fd, "wb") as f:
                if keep_mode is not None:
                    os.chmod(tmp, keep_mode)
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException as exc:
            with _signals_held():
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if isinstance(exc, OSError) and not isinstance(exc, WriteError):
                raise WriteError(exc.errno, exc.strerror or str(exc), path) from exc
            raise
    try:
        _fsync_directory(directory)
    except OSError as exc:
        raise WriteError(exc.errno, exc.strerror or str(exc), path) from None
    return path
