"""Where ``compile`` writes an artifact: checks on the output path, and the atomic replacement of the directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager

from convpipe.errors import ConvpipeError


@contextmanager
def atomic_directory(dest: str):
    """Yield a temporary directory beside ``dest``; on success it replaces ``dest`` by rename, on any error it is
    removed and ``dest`` is left as it was (an artifact is written completely or not at all)."""
    dest = os.path.abspath(dest)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.tmp-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(dest):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=parent)
            os.rename(dest, os.path.join(old, "a"))
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        elif os.path.exists(dest):
            raise ConvpipeError(f"{dest}: exists and is not a directory; refusing to overwrite it")
        else:
            os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
