"""Writing files so that nothing is ever half-written: :func:`atomic_write`.

Every file bpgpu writes (models, checkpoints, JSON records, plots, benchmark reports, the README
block) goes through :func:`atomic_write`: the data goes to a temporary file in the target's
directory, is fsynced, and is renamed into place, and the directory is fsynced after the rename.
A crash, ``kill -9`` or a full disk leaves the previous file complete, and a write that fails
removes its temporary file.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["atomic_write"]


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


def atomic_write(path, write) -> str:
    """Create ``path`` by calling ``write(binary_file)`` on a temporary file, then renaming it.

    Either the whole new file is there afterwards or the old state is untouched (no half-written
    output, whatever ``write`` raises). The data is fsynced before the rename and the directory
    after it, so once this returns the new file survives a crash or power cut.

    Permissions: a new file gets the mode any new file gets under the process umask (0644 under
    the usual 022, 0600 under 077). Replacing an existing file keeps that file's permission bits,
    so a model its owner made private stays private when it is saved again.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        keep_mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        keep_mode = None
    fd, tmp = _create_temp(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if keep_mode is not None:
                os.chmod(tmp, keep_mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    return path
