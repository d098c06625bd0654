"""A service-account token volume written the way the kubelet projects one.

The kubelet's AtomicWriter (`pkg/volume/util/atomic_writer.go`) never rewrites a file in
place: each version of the payload goes into a fresh hidden directory
`..<UTC timestamp>.<random>`, the `..data` symlink is swapped to it with a rename, and the
visible names (`token`, `ca.crt`, `namespace`) are symlinks through `..data`. A reader that
re-opens `DIR/token` sees the whole old or the whole new token, never a mix; one that keeps
an open file keeps the old token. Rotating means writing a new version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

_DATA = "..data"


def write_projection(directory: str | Path, files: dict[str, bytes]) -> Path:
    """Publish `files` (name -> content) as the new version of the volume at `directory`."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    previous = os.readlink(target / _DATA) if (target / _DATA).is_symlink() else None
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
    version = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    version.chmod(0o755)
    for name, content in files.items():
        path = version / name
        path.write_bytes(content)
        # The token is a credential: readable by its owner only.
        path.chmod(0o600 if name == "token" else 0o644)
    staging = target / "..data_tmp"
    if staging.is_symlink() or staging.exists():
        staging.unlink()
    staging.symlink_to(version.name)
    staging.replace(target / _DATA)
    for name in files:
        link = target / name
        if not link.is_symlink():
            if link.exists():
                link.unlink()
            link.symlink_to(f"{_DATA}/{name}")
    if previous and previous != version.name:
        shutil.rmtree(target / previous, ignore_errors=True)
    return target
