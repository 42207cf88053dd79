"""A tamper-evident audit log of a run: ``RUN_DIR/audit.jsonl``, a hash chain of records.

Each line is one record in canonical JSON (sorted keys, no spaces) holding ``seq`` (0, 1, 2, ...),
``kind``, ``time`` (ISO-8601 UTC), the caller's fields and ``prev``: the sha256 of the previous
line's bytes (64 zeros for the first). Editing, deleting, inserting or reordering a record breaks
the chain at the record after it. Checkpoint records hold the sha256 of every file of the
checkpoint directory, so a changed weight file is caught too.

The chain alone cannot catch an edit of its last record, a deleted last record, or a whole chain
rewritten with recomputed hashes: ``sign_run`` signs its head with an ed25519 key
(``audit.sig.json``), and ``verify_run(run_dir, pubkey=...)`` checks the chain against that head.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from asyncvla.rundir import atomic_write_text

AUDIT_FILE = "audit.jsonl"
SIGNATURE_FILE = "audit.sig.json"
KINDS = ("run_start", "config", "checkpoint", "weights", "evaluation", "alert", "resume", "run_end")

GENESIS = "0" * 64
"""The ``prev`` of the first record."""
_RESERVED = ("seq", "kind", "time", "prev")
_MODEL_SUFFIXES = (".safetensors", ".json")
"""Files a checkpoint loader reads: one of these appearing unrecorded in a checkpoint is refused."""
_NO_VERIFY = "; pass --no-verify to load it anyway"


class AuditError(Exception):
    """A broken or missing audit log, signature or key; the message is one line naming the file or
    record and what is wrong."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def checkpoint_hashes(ckpt_dir: str | Path) -> dict[str, str]:
    """sha256 of every regular file under ``ckpt_dir``, keyed by relative posix path, sorted.
    Hidden entries (``.model.safetensors.tmp``, ``.update_00004.tmp``) are in-flight atomic writes,
    not part of the checkpoint."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such checkpoint directory")
    files = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = sha256_file(p)
    return dict(sorted(files.items()))


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _short(digest: str) -> str:
    return f"{digest[:8]}…"


@dataclass
class _Chain:
    """The result of reading audit.jsonl: the intact records before the first problem."""

    records: list[dict[str, Any]]
    head: str
    """sha256 of the file's last line ("" for an empty file), intact or not."""
    problem: str | None


def _seq_of(line: bytes) -> int | None:
    try:
        seq = json.loads(line)["seq"]
    except (ValueError, KeyError, TypeError):
        return None
    return seq if type(seq) is int else None


def _record_problem(rec: Any, line: bytes) -> str | None:
    """What is wrong with one parsed line by itself (fields, kind, canonical form), or None."""
    if not isinstance(rec, dict):
        return "is not a JSON object — the file was hand-edited"
    missing = [k for k in _RESERVED if k not in rec]
    if missing:
        return f"lacks field(s) {', '.join(missing)} — the file was hand-edited"
    if type(rec["seq"]) is not int:
        return f"seq {rec['seq']!r} is not an integer"
    if rec["kind"] not in KINDS:
        return f"unknown kind {rec['kind']!r} (expected one of {', '.join(KINDS)})"
    try:
        datetime.fromisoformat(rec["time"])
    except (TypeError, ValueError):
        return f"time {rec['time']!r} is not an ISO-8601 timestamp"
    if rec["kind"] == "checkpoint":
        path, files = rec.get("path"), rec.get("files")
        if not isinstance(path, str) or not isinstance(files, dict):
            return "checkpoint record lacks a path string or a files mapping"
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts:
            return f"checkpoint path {path!r} is not inside the run directory"
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            return "checkpoint files must map file names to sha256 strings"
    if _canonical(rec) != line:
        return "is not in canonical form (sorted keys, no spaces) — the line was hand-edited"
    return None


def _seq_problem(seq: int, lines: list[bytes], index: int) -> str:
    """Why ``seq`` stands on line ``index`` (0-based), where seq ``index`` belongs: an earlier seq
    again (inserted or copied), the expected seq further down (reordered) or a gap (deleted)."""
    expected = index
    if seq < expected:
        return f"seq {seq} where {expected} was expected — a record was inserted or copied here"
    for j in range(index + 1, len(lines)):
        if _seq_of(lines[j]) == expected:
            return f"seq {seq} comes before seq {expected} (line {j + 1}) — records were reordered"
    gap = seq - expected
    return f"seq {seq} where {expected} was expected — {gap} record(s) deleted before this line"


def _read_chain(path: Path) -> _Chain:
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines[-1] != b""
    if not torn:
        lines.pop()
    head = _sha(lines[-1]) if lines else ""
    records: list[dict[str, Any]] = []
    prev = GENESIS
    for i, line in enumerate(lines):
        at = f"{AUDIT_FILE} line {i + 1}"
        try:
            rec = json.loads(line)
        except ValueError:
            what = "is truncated (a torn write)" if torn and i == len(lines) - 1 else "was hand-edited"
            return _Chain(records, head, f"{at}: not valid JSON — the line {what}")
        if isinstance(rec, dict) and type(rec.get("seq")) is int:
            at = f"{at} (seq {rec['seq']})"
        problem = _record_problem(rec, line)
        if problem is None and rec["seq"] != i:
            problem = _seq_problem(rec["seq"], lines, i)
        if problem is None and rec["prev"] != prev:
            problem = (
                "prev is not the genesis hash (64 zeros) — the first record was edited or records "
                "before it were deleted"
                if i == 0
                else f"prev hash does not match line {i} — a record was edited, deleted, inserted or reordered"
            )
        if problem is None and torn and i == len(lines) - 1:
            problem = "no newline at the end — the last record is truncated (a torn write)"
        if problem is not None:
            return _Chain(records, head, f"{at}: {problem}")
        records.append(rec)
        prev = _sha(line)
    return _Chain(records, head, None)


def _latest_checkpoints(records: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Recorded file hashes per checkpoint path; the last record of a path wins (a path can be
    written again), sorted by path."""
    latest = {r["path"]: r["files"] for r in records if r["kind"] == "checkpoint"}
    return dict(sorted(latest.items()))


def _checkpoint_problem(directory: Path, files: dict[str, str]) -> str | None:
    """The first recorded file whose bytes differ or are gone, or an unrecorded model file."""
    if not directory.is_dir():
        return "directory is missing"
    for name, recorded in files.items():
        p = directory / name
        if not p.is_file():
            return f"{name} is missing"
        current = sha256_file(p)
        if current != recorded:
            return f"{name} sha256 mismatch (recorded {_short(recorded)}, now {_short(current)})"
    for name in checkpoint_hashes(directory):
        if name not in files and name.endswith(_MODEL_SUFFIXES):
            return f"{name} is not recorded (added after the checkpoint was written)"
    return None


def _audit_path(run_dir: str | Path) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise AuditError(f"{run}: no such run directory")
    path = run / AUDIT_FILE
    if not path.is_file():
        raise AuditError(f"{path} missing: the run has no audit log")
    return path


class AuditLog:
    """Append-only hash chain in RUN_DIR/audit.jsonl. One writer (the driver process).

    Opening an existing chain continues it (a resumed run): the chain is verified first, record by
    record, but not the checkpoint files, which ``verify_checkpoint`` checks when one is loaded.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / AUDIT_FILE
        self.seq, self.prev = 0, GENESIS
        if self.path.exists():
            chain = _read_chain(self.path)
            if chain.problem is not None:
                raise AuditError(f"{self.run_dir}: {chain.problem}; refusing to continue a broken chain")
            if chain.records:
                self.seq, self.prev = len(chain.records), chain.head
        self._file = self.path.open("ab")
        self._lock = threading.Lock()

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one record (flushed and fsynced before returning) and return it as read back."""
        if kind not in KINDS:
            raise ValueError(f"unknown audit record kind {kind!r} (expected one of {', '.join(KINDS)})")
        reserved = [k for k in _RESERVED if k in fields]
        if reserved:
            raise ValueError(f"audit record fields {reserved} are set by the log itself")
        with self._lock:
            time = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            line = _canonical({**fields, "seq": self.seq, "kind": kind, "time": time, "prev": self.prev})
            rec = json.loads(line)
            if _canonical(rec) != line:
                raise ValueError(f"audit record fields do not survive a JSON round trip: {fields}")
            self._file.write(line + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.seq, self.prev = self.seq + 1, _sha(line)
        return rec

    def checkpoint(self, ckpt_dir: str | Path, **fields: Any) -> dict[str, Any]:
        """A ``checkpoint`` record of a directory inside the run: its path relative to the run
        directory and the sha256 of each of its files."""
        ckpt = Path(ckpt_dir).resolve()
        try:
            rel = ckpt.relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            raise ValueError(
                f"{ckpt_dir}: checkpoint is not inside the run directory {self.run_dir}"
            ) from None
        return self.append("checkpoint", path=rel, files=checkpoint_hashes(ckpt), **fields)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class AuditResult:
    ok: bool
    records: int
    """Intact records of the chain (those before the first problem when the chain is broken)."""
    message: str
    """``audit chain intact: N records, M checkpoints verified[, signature valid]`` or the error."""
    head: str
    """sha256 of the last record line ("" if none)."""


def _load_private_key(key_path: str | Path) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise AuditError(f"{key_path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{key_path}: a {type(key).__name__}, not an ed25519 private key")
    return key


def _load_public_key(pubkey: str | Path) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(pubkey).read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as e:
        raise AuditError(f"{pubkey}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{pubkey}: a {type(key).__name__}, not an ed25519 public key")
    return key


def _key_sha256(public_key: Any) -> str:
    return _sha(public_key.public_bytes_raw())


def _signed_payload(chain: _Chain) -> dict[str, Any]:
    return {
        "head": chain.head,
        "records": len(chain.records),
        "checkpoints": _latest_checkpoints(chain.records),
    }


def _signature_problem(run: Path, chain: _Chain, pubkey: str | Path) -> str | None:
    """Whether audit.sig.json is a signature by ``pubkey`` over this chain's head."""
    from cryptography.exceptions import InvalidSignature

    sig_path = run / SIGNATURE_FILE
    if not sig_path.is_file():
        return f"{SIGNATURE_FILE} missing: the run was not signed"
    try:
        key = _load_public_key(pubkey)
    except AuditError as e:
        return str(e)
    try:
        doc = json.loads(sig_path.read_bytes())
        payload = {k: doc[k] for k in ("head", "records", "checkpoints")}
        signature = base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        return f"{SIGNATURE_FILE}: not a signature file (head, records, checkpoints, signature): {e!r}"
    try:
        key.verify(signature, _canonical(payload))
    except InvalidSignature:
        signer = doc.get("public_key_sha256")
        other = (
            f" (signed by key {_short(signer)})"
            if isinstance(signer, str) and signer != _key_sha256(key)
            else ""
        )
        return f"signature does not verify against {pubkey}{other}"
    if payload != _signed_payload(chain):
        return (
            f"chain head differs from the signed head (signed: {payload['records']} records, head "
            f"{_short(str(payload['head']))}; chain: {len(chain.records)} records, head "
            f"{_short(chain.head)}) — records were appended, edited or rewritten after signing"
        )
    return None


def _verify(run_dir: str | Path, pubkey: str | Path | None) -> tuple[AuditResult, _Chain]:
    path = _audit_path(run_dir)
    chain = _read_chain(path)
    n = len(chain.records)
    if chain.problem is not None:
        return AuditResult(False, n, chain.problem, chain.head), chain
    checkpoints = _latest_checkpoints(chain.records)
    for rel, files in checkpoints.items():
        problem = _checkpoint_problem(path.parent / rel, files)
        if problem is not None:
            return AuditResult(False, n, f"checkpoint {rel}: {problem}", chain.head), chain
    message = f"audit chain intact: {n} records, {len(checkpoints)} checkpoints verified"
    if pubkey is not None:
        problem = _signature_problem(path.parent, chain, pubkey)
        if problem is not None:
            return AuditResult(False, n, problem, chain.head), chain
        message += ", signature valid"
    return AuditResult(True, n, message, chain.head), chain


def verify_run(run_dir: str | Path, pubkey: str | Path | None = None) -> AuditResult:
    """Check the chain record by record, every recorded checkpoint's files and, given ``pubkey``
    (a PEM ed25519 public key), the signature in audit.sig.json. Reports the first problem; raises
    AuditError only when the run directory or its audit.jsonl is missing."""
    return _verify(run_dir, pubkey)[0]


def sign_run(run_dir: str | Path, key_path: str | Path) -> Path:
    """Sign the head of an intact chain with a PEM ed25519 private key: RUN_DIR/audit.sig.json."""
    result, chain = _verify(run_dir, None)
    if not result.ok:
        raise AuditError(f"{run_dir}: {result.message}; refusing to sign a broken chain")
    key = _load_private_key(key_path)
    payload = _signed_payload(chain)
    doc = {
        **payload,
        "signature": base64.b64encode(key.sign(_canonical(payload))).decode(),
        "public_key_sha256": _key_sha256(key.public_key()),
    }
    out = Path(run_dir) / SIGNATURE_FILE
    atomic_write_text(out, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out


def generate_key(private_path: str | Path, public_path: str | Path) -> None:
    """An ed25519 key pair: PKCS8 PEM private key (unencrypted, mode 0600), SubjectPublicKeyInfo PEM
    public key. An existing private key file is never overwritten."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise AuditError(f"{private_path} exists: refusing to overwrite a private key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    Path(public_path).write_bytes(public_pem)


def verify_checkpoint(ckpt_dir: str | Path) -> None:
    """Before loading a checkpoint: if its run (the nearest of the two directories above it holding
    audit.jsonl) has an audit log, the chain must be intact, the checkpoint recorded in it and its
    files unchanged. A checkpoint outside any audited run is not checked."""
    ckpt = Path(ckpt_dir).resolve()
    run = next((d for d in ckpt.parents[:2] if (d / AUDIT_FILE).is_file()), None)
    if run is None:
        return
    chain = _read_chain(run / AUDIT_FILE)
    if chain.problem is not None:
        raise AuditError(f"{run}: {chain.problem}{_NO_VERIFY}")
    rel = ckpt.relative_to(run).as_posix()
    files = _latest_checkpoints(chain.records).get(rel)
    if files is None:
        raise AuditError(f"{ckpt_dir}: not recorded in {run / AUDIT_FILE}{_NO_VERIFY}")
    problem = _checkpoint_problem(ckpt, files)
    if problem is not None:
        raise AuditError(f"{ckpt_dir}: {problem}{_NO_VERIFY}")
