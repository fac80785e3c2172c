"""The data dir's secrets: generated once, written atomically (0600), never shorter than 32 bytes.

`flywheel.secret` is the data dir's own key. Purpose keys are derived from it (HMAC of the purpose name), so
one file backs the user pseudonyms, the hash of forgotten users and the audit chain's anchor, and no key is
used for two things. It must never change: a new one would make every stored pseudonym unreachable by
`forget`. The response-id key (`response.secret`, or `serving.response_secret`) is separate, since an
operator may rotate it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from infra.errors import FlywheelError

MIN_BYTES = 32
DATA_DIR_SECRET = "flywheel.secret"


def check_secret(value: bytes, where: str) -> bytes:
    if len(value) < MIN_BYTES:
        raise FlywheelError(
            f"{where} is {len(value)} bytes: a secret needs at least {MIN_BYTES} "
            f"(generate one with: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return value


def file_secret(path: Path) -> bytes:
    """The secret in `path`, created (random, 64 hex characters) if missing. Written to a temporary file,
    fsynced, then renamed: a crash leaves either no file or a whole one. A short or empty file (left by an
    older version's crash) is refused, never replaced: what it signed would silently stop verifying."""
    path = Path(path)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, and never over a file another process wrote meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    value = path.read_bytes().strip()
    return check_secret(value, f"the secret file {path} (delete it only if nothing it signed must stay valid)")


def derive(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose ("user-pseudonyms", "forgotten-users", "audit-chain") from the data dir's secret."""
    return hmac.new(secret, f"flywheel/{purpose}".encode(), hashlib.sha256).digest()


def data_dir_key(data_dir: Path, purpose: str) -> bytes:
    return derive(file_secret(Path(data_dir) / DATA_DIR_SECRET), purpose)


# The keys in the default config: printed in the README, so anyone may know them.
PUBLIC_KEYS = {
    hashlib.sha256(b"flywheel-demo-key").hexdigest(): "flywheel-demo-key",
    hashlib.sha256(b"flywheel-review-key").hexdigest(): "flywheel-review-key",
}
KEYS_FILE = "keys.json"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def public_keys(serving) -> list[str]:
    """'serving.api_keys[demo] = flywheel-demo-key', ... for every public key the section holds."""
    return [
        f"serving.{field}[{name}] = {PUBLIC_KEYS[h]}"
        for field in ("api_keys", "admin_keys")
        for name, h in getattr(serving, field).items()
        if h in PUBLIC_KEYS
    ]


def service_keys(cfg, *, demo_keys: bool, echo=print):
    """The config `up` and `serve` run with: no public key unless `demo_keys` (and then only on loopback).

    A key table left at its default is replaced by keys generated on the first run into DATA_DIR/keys.json
    (their hashes only; each key is printed once). A public key mixed into a configured table is refused."""
    import json

    from serving.config import ServingConfig

    serving, found = cfg.serving, public_keys(cfg.serving)
    if demo_keys:
        if found and serving.host not in LOOPBACK:
            raise FlywheelError(
                f"--demo-keys with serving.host={serving.host}: the demo keys are public; serve them on loopback only"
            )
        return cfg
    if not found:
        return cfg
    defaults = ServingConfig()
    mixed = [
        k
        for k in found
        if (k.startswith("serving.api_keys") and serving.api_keys != defaults.api_keys)
        or (k.startswith("serving.admin_keys") and serving.admin_keys != defaults.admin_keys)
    ]
    if mixed:
        raise FlywheelError(
            f"{mixed[0]}: a public key from the README. Replace its hash "
            "(`flywheel keys hash NEW-KEY`), or pass --demo-keys on a laptop"
        )
    path = Path(cfg.data_dir) / KEYS_FILE
    stored = json.loads(path.read_text()) if path.exists() else {}
    fresh = {}
    for field, name in (("api_keys", "app"), ("admin_keys", "reviewer")):
        if getattr(serving, field) == getattr(defaults, field) and not stored.get(field):
            fresh[field] = (name, f"fw-{secrets.token_urlsafe(32)}")
            stored[field] = {name: hashlib.sha256(fresh[field][1].encode()).hexdigest()}
    if fresh:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for field, (name, key) in fresh.items():
            what = "app key" if field == "api_keys" else "reviewer key"
            echo(f"keys      new {what} for {name!r}: {key}  (shown once; its hash is in {path})")
    update = {f: stored[f] for f in ("api_keys", "admin_keys") if getattr(serving, f) == getattr(defaults, f)}
    return cfg.model_copy(update={"serving": serving.model_copy(update=update)})


ANCHOR_FILE = "audit.anchor"


def write_anchor(con, data_dir: Path) -> None:
    """Sign the audit log's head with the data dir's secret and write it (atomically) to DATA_DIR/audit.anchor,
    and log it: a reviewer who keeps that line can prove later that nothing up to it was removed or rewritten."""
    import json
    import logging

    from curation import audit

    anchor = audit.seal(con, data_dir_key(data_dir, "audit-chain"))
    path = Path(data_dir) / ANCHOR_FILE
    if anchor is None or read_anchor(data_dir) == anchor:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(anchor.as_dict()))
    os.replace(tmp, path)
    logging.getLogger("flywheel.audit").info("audit head %d %s", anchor.seq, anchor.hash)


def read_anchor(data_dir: Path):
    import json

    from curation import audit

    try:
        return audit.Anchor(**json.loads((Path(data_dir) / ANCHOR_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise FlywheelError(
            f"{Path(data_dir) / ANCHOR_FILE} is damaged ({e}): the audit log cannot be checked against it"
        ) from None
