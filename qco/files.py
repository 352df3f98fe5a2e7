"""Files qco writes are its own: every file is written beside its target and renamed over it (a reader sees
the old file or the new, never half, and a link planted at the target is replaced, not followed); a folder is
filled beside its target and renamed into place whole; a lock or a log that must be opened in place is opened
without following a link (a planted one is refused in one line); and a finished folder's files are checked
against the sizes and sha256 recorded when it was written. The four stores (qco/stores/), records, sweep jobs
and reports all write through here."""

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional

from qco.errors import QcoError

log = logging.getLogger(__name__)

FILES_MARKER = "qco_build.json"  # a store folder's manifest, written last: {"files": {name: {bytes, sha256}}, ...}
VERIFIED = "qco_verified.json"  # the files' fingerprints when their checksums last matched


def inside(path: str, folder: str) -> bool:
    """Whether `path` lies inside `folder` or is it, links followed."""
    path, folder = (os.path.realpath(os.path.abspath(os.path.expanduser(p))) for p in (path, folder))
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def open_own(path: Path, mode: str = "a+"):
    """Open `path` for a lock or an appended log without following a link: O_NOFOLLOW refuses a symlink put in
    its place (which would otherwise truncate or fill the file it points at), in one line."""
    flags = {"a+": os.O_RDWR | os.O_APPEND, "a": os.O_WRONLY | os.O_APPEND, "r+": os.O_RDWR}[mode]
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise QcoError(f"{path}: a symbolic link where qco keeps its own file ({os.readlink(path)!r}); qco "
                           "never writes through a link; fix: remove the link (rm it), and check who put it there")                 from None
        raise
    return os.fdopen(fd, mode)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """One writer of a store folder at a time, across processes (an flock on .NAME.lock beside it, so a killed
    holder leaves no stale lock). The holder removes what a killed writer left (write_folder_atomic's staging
    folders): no other writer of it is running."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open_own(folder.parent / f".{folder.name}.lock") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        for leftover in folder.parent.glob(f".{folder.name}.*"):
            if leftover.is_dir() and not leftover.is_symlink():
                log.warning("Removing %s, left by a build that did not finish", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
        yield


def _readable(staging: str) -> None:
    """mkstemp makes files private (0600); results are shared like any file the user writes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o666 & ~umask)


def write_atomic(path: Path, write: Callable, binary: bool = False) -> None:
    """Write beside the target and rename over it: a reader sees the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _readable(staging)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def write_folder_atomic(folder: Path, fill: Callable[[Path], None], finished: Callable[[Path], bool]) -> None:
    """Fill a folder beside the target and rename it into place whole: a reader finds no folder or a
    complete one. Where another process put a finished one there first, theirs is kept."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        fill(staging)
        try:
            os.replace(staging, folder)
        except OSError:
            if not finished(folder):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, lambda handle: json.dump(data, handle, indent=2, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text))


def save_image_atomic(image, path: Path) -> None:
    write_atomic(path, lambda handle: image.save(handle, format="PNG"), binary=True)


def save_video_atomic(frames, path: Path, fps: int) -> None:
    """An animated GIF (PIL writes it; no video codec needed), looping, at the model's frame rate as near
    as GIF's hundredths of a second come (16 fps: 60 ms a frame)."""
    write_atomic(path, lambda handle: frames[0].save(handle, format="GIF", save_all=True, append_images=frames[1:],
                                                     duration=round(1000 / fps), loop=0), binary=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> list:
    """What any write to a file changes: its inode's change time cannot be set back from user space."""
    info = path.stat()
    return [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def damage(folder: Path, marker: str = FILES_MARKER) -> Optional[str]:
    """Why a finished store folder can no longer be trusted (a file missing, cut short or altered), or None.
    Each file's checksum, recorded at build, is compared again whenever the file may have been written
    since it was last verified (its fingerprint changed); the fingerprints are kept in VERIFIED."""
    try:
        files = json.loads((folder / marker).read_text())["files"]
        expected = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {marker} is missing, unreadable or from before checksums were recorded"
    try:
        verified = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        verified = {}
    changed = False
    for name, (size, checksum) in expected.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"its {marker} names {name!r}, outside the folder"
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if verified.get(name) != fingerprint(path):
            if sha256_of(path) != checksum:
                return f"{name} differs from what was written (its sha256 changed)"
            verified[name], changed = fingerprint(path), True
    if changed:
        try:
            write_text_atomic(folder / VERIFIED, json.dumps(verified))
        except OSError:  # a read-only store: verified again next time, no harm
            pass
    return None


def not_yours(folder: Path) -> Optional[str]:
    """Why code kept in a store folder may not be the user's own (a store's files that a run executes: compiled
    kernels, an AOTInductor package): the folder, its parent or a file in it owned by another user, or writable by
    every user, or a link. None where all is the user's. Group-writable is allowed (a umask of 002 makes it)."""
    import os
    import stat

    for path in [folder.parent, folder, *sorted(folder.iterdir())]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            return f"{path} is a link"
        if info.st_uid != os.getuid():
            return f"{path} belongs to another user (uid {info.st_uid})"
        if info.st_mode & stat.S_IWOTH and not (path == folder.parent and info.st_mode & stat.S_ISVTX):
            return f"{path} is writable by every user"
    return None


def manifest(folder: Path) -> Dict[str, dict]:
    """Each file of a folder being filled, with its size and sha256 (for FILES_MARKER)."""
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}
