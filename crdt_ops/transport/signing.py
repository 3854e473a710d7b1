"""Per-principal signatures (Ed25519) over a message's exact bytes.

For deployments where messages pass through hands other than RabbitMQ (a relay, a
bridge, an archive replayed later), the broker's ``user_id`` check proves nothing. A
signature does: every message carries ``x-crdt-signer`` (a principal) and
``x-crdt-sig`` (Ed25519 over the body, hex); a replica with ``--auth signature`` accepts a
message only when the signer's public key is in its keyring, the signature verifies,
and the message's origin belongs to the signer (:func:`crdt_ops.policy.belongs`).
Holding the public keys does not let a replica sign for anyone else.

A key file is JSON ``{"principal": ..., "private_key": <hex of 32 bytes>}`` (keep it
0600); a keyring is JSON ``{principal: <hex of the 32-byte public key>}``.
``crdt-ops keygen PRINCIPAL --out DIR`` makes one key and adds it to ``DIR/keyring.json``.
Needs the ``cryptography`` package (``pip install 'crdt-ops[sign]'``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crdt_ops.errors import CrdtError, InvalidMessage, Unauthenticated

SIGNER_HEADER = "x-crdt-signer"
SIGNATURE_HEADER = "x-crdt-sig"


class BadSignature(InvalidMessage):
    """The signature does not verify with the signer's key (``reason`` ``bad-signature``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("bad-signature", detail)


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise CrdtError("signatures need the cryptography package: "
                        "pip install 'crdt-ops[sign]'") from None
    return ed25519


class Signer:
    """Signs as ``principal`` with its private key."""

    def __init__(self, principal: str, private_key: bytes) -> None:
        self.principal = principal
        self._key = _ed25519().Ed25519PrivateKey.from_private_bytes(private_key)

    @classmethod
    def generate(cls, principal: str) -> Signer:
        from cryptography.hazmat.primitives import serialization

        key = _ed25519().Ed25519PrivateKey.generate()
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        return cls(principal, raw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Signer:
        data = _read_json(path, "signing key")
        try:
            return cls(data["principal"], bytes.fromhex(data["private_key"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CrdtError(f"{path} is not a crdt-ops key file ({e}); make one with "
                            "crdt-ops keygen") from None

    def private_hex(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return str(self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption()).hex())

    def public_hex(self) -> str:
        return _raw_hex(self._key.public_key())

    def headers(self, body: bytes) -> dict[str, Any]:
        """The headers that carry this signer's signature of ``body``."""
        return {SIGNER_HEADER: self.principal, SIGNATURE_HEADER: self._key.sign(body).hex()}


class Keyring:
    """The public keys of the principals whose messages a replica accepts."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        ed = _ed25519()
        self._keys = {p: ed.Ed25519PublicKey.from_public_bytes(bytes.fromhex(k))
                      for p, k in keys.items()}

    def public_hex(self, principal: str) -> str | None:
        """The public key the keyring holds for ``principal``, as hex (None: none)."""
        key = self._keys.get(principal)
        return None if key is None else _raw_hex(key)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Keyring:
        data = _read_json(path, "keyring")
        try:
            return cls(data)
        except (AttributeError, TypeError, ValueError) as e:
            raise CrdtError(f"{path} is not a keyring of principal -> public key hex ({e})"
                            ) from None

    def signer(self, body: bytes, headers: Mapping[str, Any] | None) -> str:
        """The principal whose valid signature ``body`` carries in ``headers``; raises
        :class:`~crdt_ops.errors.Unauthenticated` (no or unknown signer) or
        :class:`BadSignature`. The caller checks that the origin belongs to it."""
        headers = headers or {}
        who, sig = headers.get(SIGNER_HEADER), headers.get(SIGNATURE_HEADER)
        if isinstance(who, bytes):
            who = who.decode(errors="replace")
        if isinstance(sig, bytes):
            sig = sig.decode(errors="replace")
        if not isinstance(who, str) or not isinstance(sig, str):
            raise Unauthenticated("the message is not signed (--auth signature)")
        key = self._keys.get(who)
        if key is None:
            raise Unauthenticated(f"no key for signer {who[:100]!r} in the keyring")
        try:
            key.verify(bytes.fromhex(sig), body)
        except Exception:  # cryptography's InvalidSignature, and malformed signatures
            raise BadSignature(f"the signature of {who!r} does not verify") from None
        return who


def _raw_hex(public_key: Any) -> str:
    """An Ed25519 public key's 32 raw bytes, as hex (as keygen writes the keyring)."""
    from cryptography.hazmat.primitives import serialization

    return str(public_key.public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw).hex())


def _read_json(path: str | os.PathLike[str], what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CrdtError(f"cannot read the {what} {path}: {e}") from None


def keygen(principal: str, out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``out/<principal>.key`` (0600) and add its public key to
    ``out/keyring.json``; return both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    signer = Signer.generate(principal)
    key_path = out / f"{principal}.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"principal": principal, "private_key": signer.private_hex()}, f)
    ring_path = out / "keyring.json"
    ring = json.loads(ring_path.read_text()) if ring_path.exists() else {}
    ring[principal] = signer.public_hex()
    ring_path.write_text(json.dumps(ring, indent=2, sort_keys=True) + "\n")
    return key_path, ring_path
