"""The default email backend: Django's file backend, readable by its owner only.

Welcome emails carry one-time sign-in links. Django's backend creates its
files with the process umask (0644 on most systems), so anyone on the host
could read a link and sign in as a tenant's first admin. Here the directory is
created 0700 and every file 0600 at creation, never widened and narrowed later.
"""

from __future__ import annotations

import contextlib
import os

from django.conf import settings
from django.core.mail.backends import filebased


class EmailBackend(filebased.EmailBackend):
    def __init__(self, *args, file_path=None, **kwargs):
        path = file_path if file_path is not None else getattr(settings, "EMAIL_FILE_PATH", None)
        if path:
            # Only a directory made here is set to 0700: an existing one is the
            # operator's (it may be shared), and the files in it are 0600 anyway.
            # A failure here is reported by the parent class, with the path and why.
            with contextlib.suppress(OSError):
                os.makedirs(path, mode=0o700, exist_ok=True)
        super().__init__(*args, file_path=file_path, **kwargs)

    def open(self) -> bool:
        if self.stream is None:
            fd = os.open(self._get_filename(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self.stream = os.fdopen(fd, "ab")
            return True
        return False
