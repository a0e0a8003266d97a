"""Where ``compile`` (and ``export``) write: checks on the output path, the atomic replacement of an artifact
directory, and the clean-up of temporaries that a killed run left behind.

The rules, in order of importance:

- **A user's files are never destroyed.** An existing ``-o`` directory is replaced only when it is a convpipe
  artifact (its ``manifest.json`` says ``format`` 1 and carries a ``convpipe_version``) holding nothing but the files
  ``compile`` writes, or when it is empty. The working directory, any of its parents, and any directory holding
  the source model are never replaced, artifact or not.
- **An artifact is written completely or not at all**: it is built in a temporary directory beside the
  destination and renamed into place (:func:`atomic_directory`).
- **Nothing is left behind**: temporaries are named ``.NAME.tmp-PID-XXXX`` (``.NAME.old-PID-XXXX`` while an old
  artifact is swapped out); a run killed by SIGKILL cannot remove its own, so every later run removes those
  beside its output whose process ``PID`` no longer exists (:func:`clean_stale_temporaries`). SIGTERM/SIGINT are
  turned into exceptions by the CLI, so the ``finally`` clauses here run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager

from convpipe.errors import ConvpipeError

#: Files a convpipe artifact directory may hold (see :mod:`convpipe.runtime.artifact`).
ARTIFACT_FILES = frozenset({"manifest.json", "model.so", "device.cu"})
#: The further libraries of a variable-size artifact (one per build: ``model.<build>.so``, issue 16).
_BUILD_LIBRARY = re.compile(r"^model\.[A-Za-z0-9_]+\.so$")

_STALE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _is_within(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or lies below it (both made absolute and symlink-resolved)."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _is_artifact(directory: str) -> bool:
    try:
        with open(os.path.join(directory, "manifest.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") == 1 and "convpipe_version" in m


def check_output_dir(dest: str, sources: tuple[str, ...] = ()) -> None:
    """Refuse an output directory that ``compile`` must not write or replace.

    Args:
        dest: the ``-o`` path.
        sources: input files of the run (the ``.onnx``): a directory holding one of them is never replaced.

    Raises:
        ConvpipeError (one line naming ``dest``): it is the working directory or one of its parents; it holds a
            source file; it exists and is not a directory; it is a directory that is not a convpipe artifact, or
            an artifact holding other files too (they are named); its parent is not a directory, cannot be
            created, or is not writable (``/proc``, ``/sys``, ``model.onnx/sub.cpa``).
    """
    absd = os.path.abspath(dest)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    if cwd is not None and _is_within(cwd, absd):
        raise ConvpipeError(f"-o {dest}: is the working directory or one of its parents; refusing to replace it "
                            "(give a new directory name, e.g. -o model.cpa)")
    for src in sources:
        if _is_within(src, absd):
            raise ConvpipeError(f"-o {dest}: holds the source model {src}; refusing to replace it")
    if os.path.lexists(absd):
        if os.path.islink(absd) or not os.path.isdir(absd):
            raise ConvpipeError(f"-o {dest}: exists and is not a directory; refusing to overwrite it")
        entries = os.listdir(absd)
        if entries:
            if not _is_artifact(absd):
                raise ConvpipeError(f"-o {dest}: exists and is not a convpipe artifact (no convpipe manifest.json); "
                                    "refusing to replace it: remove it yourself or choose another -o")
            foreign = sorted(e for e in set(entries) - ARTIFACT_FILES if not _BUILD_LIBRARY.match(e))
            if foreign:
                shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise ConvpipeError(f"-o {dest}: is a convpipe artifact but also holds other files ({shown}); "
                                    "refusing to replace it")
    _check_parent(dest, absd)


def _check_parent(dest: str, absd: str) -> None:
    parent = os.path.dirname(absd)
    probe = parent
    while not os.path.lexists(probe):  # the nearest existing ancestor must be a writable directory
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConvpipeError(f"-o {dest}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConvpipeError(f"-o {dest}: {probe} is not writable")
    if _is_within(absd, "/proc") or _is_within(absd, "/sys"):
        raise ConvpipeError(f"-o {dest}: cannot write an artifact under a kernel file system")


def _temp_prefix(dest: str, kind: str) -> str:
    return f".{os.path.basename(dest)}.{kind}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(dest: str) -> list[str]:
    """Remove ``.NAME.tmp-PID-XXXX`` / ``.NAME.old-PID-XXXX`` entries beside ``dest`` (any ``NAME``) left by a
    convpipe process ``PID`` that no longer runs (killed by SIGKILL, or a machine crash). Entries of live
    processes, and anything not named so, are left alone. Returns the paths removed."""
    parent = os.path.dirname(os.path.abspath(dest))
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        m = _STALE.match(name)
        if not m or int(m.group("pid")) == os.getpid() or _pid_alive(int(m.group("pid"))):
            continue
        path = os.path.join(parent, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _os_error(dest: str, e: OSError) -> ConvpipeError:
    return ConvpipeError(f"-o {dest}: cannot write there: {e.strerror or errno.errorcode.get(e.errno, e)}")


@contextmanager
def atomic_directory(dest: str, sources: tuple[str, ...] = ()):
    """Yield a temporary directory beside ``dest``; on success it replaces ``dest`` by rename, on any error
    (exceptions, and SIGTERM/SIGINT, which the CLI raises as exceptions) it is removed and ``dest`` is left as it
    was: an artifact is written completely or not at all. The directory gets the mode a plain ``mkdir`` would
    (0777 less the umask), not ``mkdtemp``'s 0700.

    Raises:
        ConvpipeError: see :func:`check_output_dir` (checked before and again just before the replacement);
            the location cannot be written.
    """
    check_output_dir(dest, sources)
    dest_abs = os.path.abspath(dest)
    parent = os.path.dirname(dest_abs)
    clean_stale_temporaries(dest_abs)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=_temp_prefix(dest_abs, "tmp"), dir=parent)
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as e:
        raise _os_error(dest, e) from e
    try:
        yield tmp
        check_output_dir(dest, sources)  # the destination may have changed while we built
        try:
            if os.path.isdir(dest_abs):
                old = tempfile.mkdtemp(prefix=_temp_prefix(dest_abs, "old"), dir=parent)
                try:
                    os.rename(dest_abs, os.path.join(old, "a"))
                    try:
                        os.rename(tmp, dest_abs)
                    except BaseException:
                        os.rename(os.path.join(old, "a"), dest_abs)  # put the old artifact back
                        raise
                finally:
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, dest_abs)
        except OSError as e:
            raise _os_error(dest, e) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def temporary_file_beside(path: str) -> str:
    """A fresh name ``.NAME.tmp-PID-XXXX`` beside ``path`` for writing a file then renaming it onto ``path``
    (stale ones are cleaned by :func:`clean_stale_temporaries`)."""
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path, "tmp"), dir=parent)
    os.close(fd)
    return tmp


def write_file_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it onto ``path``: a reader never sees a
    half-written file, and an interrupted write leaves ``path`` as it was (stale temporaries of killed runs are
    removed, :func:`.output.clean_stale_temporaries`).

    Raises:
        ConvpipeError: ``path`` is a directory, or its location cannot be written (names it and why).
    """
    if os.path.isdir(path):
        raise ConvpipeError(f"-o {path}: is a directory, expected a file path")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        clean_stale_temporaries(path)
        tmp = temporary_file_beside(path)
    except OSError as e:
        raise ConvpipeError(f"-o {path}: cannot write there: {e.strerror or e}") from e
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as e:
        raise ConvpipeError(f"-o {path}: cannot write there: {e.strerror or e}") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process's file-mode creation mask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
