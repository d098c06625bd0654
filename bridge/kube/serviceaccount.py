"""The pod's service account as the kubelet mounts it: token, ca.crt and namespace.

The kubelet rotates a projected (bound) token well before it expires, and once the old one
expires the API server refuses it: the token is therefore read again whenever the file
changes, checked by a `stat` before each request (cheap next to a request). The kubelet
swaps the whole directory through a `..data` symlink, so a change shows as a new inode;
an in-place rewrite shows as a new mtime or size. The official client rereads on a
one-minute timer instead, which leaves up to a minute of refused requests after an early
revocation; this reader never sends a token older than the file.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from bridge.errors import ConfigError

log = logging.getLogger(__name__)

_SETTING = "kubernetes.service_account_dir"


class ServiceAccount:
    """Files of one service-account directory; `token()` is safe to call from any thread."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.token_path = self.directory / "token"
        self.ca_path = self.directory / "ca.crt"
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int, int] | None = None
        self._token = ""
        self._unreadable = False
        for path in (self.token_path, self.ca_path):
            if not _non_empty(path):
                raise ConfigError(_SETTING, str(self.directory),
                                  f"{path.name} is missing or empty (is a service account "
                                  "token mounted in this pod?)")
        self.token()

    def token(self) -> str:
        """The current token, read again if the file changed since the last read."""
        try:
            st = os.stat(self.token_path)
        except OSError as exc:
            return self._keep(exc)
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return self._token
        with self._lock:
            if stamp == self._stamp:
                return self._token
            try:
                text = self.token_path.read_text().strip()
            except OSError as exc:
                return self._keep(exc)
            if not text:
                # Caught between a truncate and a write: the next request reads it again.
                return self._token
            if self._stamp is not None:
                log.info("kubernetes: service account token reread (rotated)")
            self._token, self._stamp, self._unreadable = text, stamp, False
            return text

    def _keep(self, exc: OSError) -> str:
        """The file cannot be read now: keep sending the last token, and say so once."""
        if not self._unreadable:
            self._unreadable = True
            log.warning("kubernetes: cannot read %s (%s); using the last token read",
                        self.token_path, exc.strerror or exc)
        return self._token

    def namespace(self) -> str:
        """The pod's namespace, or '' where the directory has no `namespace` file."""
        try:
            return (self.directory / "namespace").read_text().strip()
        except OSError:
            return ""


def _non_empty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False
