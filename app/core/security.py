"""API keys: random secrets shown once, stored as SHA-256 hashes, bound to a tenant and scopes."""

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from app.models import Scope

KEY_PREFIX = "mr1"


@dataclass(frozen=True)
class NewKey:
    plaintext: str
    prefix: str
    key_hash: str


@dataclass(frozen=True)
class Principal:
    tenant_id: uuid.UUID
    key_id: uuid.UUID
    scopes: frozenset[Scope]


def hash_key(plaintext: str) -> str:
    # The secret has 256 bits of entropy, so a fast hash is enough (no password stretching).
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_key() -> NewKey:
    prefix = secrets.token_hex(4)
    plaintext = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(plaintext=plaintext, prefix=prefix, key_hash=hash_key(plaintext))
