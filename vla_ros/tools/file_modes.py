"""The permissions of what the tools write: readable by other users, whatever the umask.

Checkpoints, artifacts, bags and reports are shared (a robot account runs what
a developer account exported), so every file the tools write ends up 0644 and
every directory 0755, set explicitly: a process umask of 077 must not make
them private. Not a subcommand (cli.SUBCOMMANDS does not list it).
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import shutil
import tempfile

FILE_MODE = 0o644
DIR_MODE = 0o755


def make_readable(path: str | Path, include_root: bool = True) -> Path:
    """Set FILE_MODE on a file, or DIR_MODE / FILE_MODE on a directory tree; returns the path.

    Symbolic links are neither changed nor followed. include_root=False
    leaves the mode of the directory `path` itself alone (a directory the
    user made, which the tool only wrote into).
    """
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return path
    if not path.is_dir():
        os.chmod(path, FILE_MODE)
        return path
    for directory, subdirs, files in os.walk(path):
        for name in subdirs:
            entry = os.path.join(directory, name)
            if not os.path.islink(entry):
                os.chmod(entry, DIR_MODE)
        for name in files:
            entry = os.path.join(directory, name)
            if not os.path.islink(entry):
                os.chmod(entry, FILE_MODE)
    if include_root:
        os.chmod(path, DIR_MODE)
    return path


@contextlib.contextmanager
def staged_directory(out: str | Path) -> Iterator[Path]:
    """Write a directory in a hidden sibling, then put it at ``out`` whole, readable by all.

    Yields the staging directory. On success its tree is made readable
    (``make_readable``) and it replaces ``out`` (a previous ``out`` stays
    until the new one is complete); on any failure it is removed, together
    with the parent directories this call created, so a failed tool leaves
    no empty or partial folder behind.
    """
    out = Path(out)
    parent = out.absolute().parent
    created = None  # the top-most parent directory made here (removed on failure)
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            break
        created = ancestor
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    try:
        yield staging
        make_readable(staging)
        if out.exists():
            trash = parent / f".{out.name}.old-{os.getpid()}"
            out.rename(trash)
            staging.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
