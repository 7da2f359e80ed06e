"""Optional signatures of device artifacts: HMAC-SHA256 of the artifact's checksum (standard library only).

The checksum (:func:`pocketrec.device.runtime.artifact_checksum`) covers every tensor and every manifest
entry, so it detects damage, but anyone can recompute it after editing a file. The signature, stored as the
manifest entry ``signature``, is ``HMAC-SHA256(key, checksum)`` in hex: only a holder of the key can make
one that verifies. The key is a secret shared by the exporter and the devices (a file's bytes, or the
environment variable ``POCKETREC_SIGNING_KEY``). This module imports nothing but the standard library, so
a device verifies without torch.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

#: Environment variable holding the key: used to sign on ``pocketrec export`` and to verify on
#: ``pocketrec recommend`` when no key file is given.
ENV_KEY = "POCKETREC_SIGNING_KEY"


def sign(checksum: str, key: bytes) -> str:
    """The signature (hex HMAC-SHA256 under ``key``) of an artifact checksum."""
    return hmac.new(key, checksum.encode(), hashlib.sha256).hexdigest()


def signature_matches(checksum: str, signature: str, key: bytes) -> bool:
    """Whether ``signature`` is the signature of ``checksum`` under ``key`` (constant-time comparison)."""
    return hmac.compare_digest(sign(checksum, key).encode(), signature.encode("utf-8", "surrogateescape"))


def read_key(path: str | Path) -> bytes:
    """A key file's bytes without trailing newlines; raises ``ValueError`` if unreadable or empty."""
    try:
        key = Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as err:
        raise ValueError(f"{path}: cannot read the signing key ({err.strerror or err})") from None
    if not key:
        raise ValueError(f"{path}: the signing key is empty")
    return key


def key_from_env() -> bytes | None:
    """The key in ``$POCKETREC_SIGNING_KEY`` (its UTF-8 bytes), ``None`` when unset; an empty value is refused."""
    value = os.environ.get(ENV_KEY)
    if value is None:
        return None
    if not value:
        raise ValueError(f"{ENV_KEY} is set but empty; unset it or give it a key")
    return os.fsencode(value)


def key_of(path: str | Path | None) -> bytes | None:
    """The key in the file ``path`` (:func:`read_key`), else the one in ``$POCKETREC_SIGNING_KEY``
    (:func:`key_from_env`), else ``None``: what every ``--sign-key`` / ``--verify-key`` option means."""
    return read_key(path) if path is not None else key_from_env()
