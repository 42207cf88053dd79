"""The audit log of a run: a hash chain whose every edit, deletion, insertion or reordering of
records is caught and named by line, checkpoint files checked against their recorded hashes, and an
ed25519 signature over the chain head that catches what the chain alone cannot (an edited last
record, a chain rewritten with recomputed hashes)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncvla.trust.audit import (
    AUDIT_FILE,
    SIGNATURE_FILE,
    AuditError,
    AuditLog,
    checkpoint_hashes,
    generate_key,
    sha256_file,
    sign_run,
    verify_checkpoint,
    verify_run,
)

NO_VERIFY = "; pass --no-verify to load it anyway"


def _canonical(rec: dict) -> bytes:
    return json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()


def _write_checkpoint(d: Path, update: int) -> Path:
    (d / "optim").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 4 + bytes([update]))
    (d / "policy.json").write_text(json.dumps({"name": "mlp", "version": update}))
    (d / "optim" / "state.json").write_text(json.dumps({"lr": 1e-4, "step": update}))
    (d / ".model.safetensors.tmp").write_bytes(b"an atomic write in flight")
    return d


def _make_run(root: Path) -> Path:
    """Seven records: run_start, config, checkpoint (update 2), checkpoint (update 4), weights,
    evaluation, run_end."""
    run = root / "run"
    with AuditLog(run) as log:
        log.append("run_start", manifest_sha256="ab" * 32, seed=0)
        log.append("config", sha256="cd" * 32, name="tiny")
        for update in (2, 4):
            log.checkpoint(
                _write_checkpoint(run / "checkpoints" / f"update_{update:05d}", update), update=update
            )
        weights = sha256_file(run / "checkpoints" / "update_00004" / "model.safetensors")
        log.append("weights", version=4, sha256=weights)
        log.append("evaluation", version=4, success_rate=0.5, episodes=8)
        log.append("run_end", updates=4)
    return run


def _lines(run: Path) -> list[bytes]:
    return (run / AUDIT_FILE).read_bytes().splitlines()


def _write(run: Path, lines: list[bytes]) -> None:
    (run / AUDIT_FILE).write_bytes(b"".join(line + b"\n" for line in lines))


def _edit(line: bytes, **changes) -> bytes:
    return _canonical({**json.loads(line), **changes})


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return _make_run(tmp_path)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_key(d / "key.pem", d / "key.pub")
    return d / "key.pem", d / "key.pub"


def test_an_intact_chain_verifies_and_links_every_record(run: Path) -> None:
    result = verify_run(run)
    assert result.ok, result.message
    assert result.records == 7
    assert result.message == "audit chain intact: 7 records, 2 checkpoints verified"
    lines = _lines(run)
    assert result.head == hashlib.sha256(lines[-1]).hexdigest()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == list(range(7))
    assert records[0]["prev"] == "0" * 64
    for prev_line, rec in zip(lines[:-1], records[1:], strict=True):
        assert rec["prev"] == hashlib.sha256(prev_line).hexdigest()
    assert [r["kind"] for r in records] == [
        "run_start",
        "config",
        "checkpoint",
        "checkpoint",
        "weights",
        "evaluation",
        "run_end",
    ]
    assert records[2]["path"] == "checkpoints/update_00002"
    assert list(records[2]["files"]) == ["model.safetensors", "optim/state.json", "policy.json"]
    assert all(line == _canonical(rec) for line, rec in zip(lines, records, strict=True))


def test_checkpoint_hashes_cover_nested_files_and_skip_hidden_ones(run: Path) -> None:
    d = run / "checkpoints" / "update_00002"
    hashes = checkpoint_hashes(d)
    assert list(hashes) == ["model.safetensors", "optim/state.json", "policy.json"]
    assert hashes["policy.json"] == hashlib.sha256((d / "policy.json").read_bytes()).hexdigest()


def _edit_middle(lines):
    lines[4] = _edit(lines[4], version=5)  # weights, still canonical JSON: only the chain catches it


def _delete(lines):
    del lines[3]


def _insert_copy(lines):
    lines.insert(5, lines[1])


def _swap(lines):
    lines[2], lines[3] = lines[3], lines[2]


def _not_json(lines):
    lines[2] = b"this is not json"


def _not_canonical(lines):
    lines[1] = lines[1].replace(b'"kind":', b'"kind": ')


def _unknown_kind(lines):
    lines[6] = _edit(lines[6], kind="run_stop")


def _missing_field(lines):
    rec = json.loads(lines[5])
    del rec["prev"]
    lines[5] = _canonical(rec)


def _first_prev(lines):
    lines[0] = _edit(lines[0], prev="1" * 64)


TAMPERS = {
    "edited": (_edit_middle, "line 6 (seq 5): prev hash does not match line 5 — a record was edited"),
    "deleted": (_delete, "line 4 (seq 4): seq 4 where 3 was expected — 1 record(s) deleted before this line"),
    "inserted": (
        _insert_copy,
        "line 6 (seq 1): seq 1 where 5 was expected — a record was inserted or copied",
    ),
    "reordered": (_swap, "line 3 (seq 3): seq 3 comes before seq 2 (line 4) — records were reordered"),
    "not_json": (_not_json, "line 3: not valid JSON — the line was hand-edited"),
    "not_canonical": (_not_canonical, "line 2 (seq 1): is not in canonical form"),
    "unknown_kind": (_unknown_kind, "line 7 (seq 6): unknown kind 'run_stop'"),
    "missing_field": (_missing_field, "line 6 (seq 5): lacks field(s) prev"),
    "first_prev": (_first_prev, "line 1 (seq 0): prev is not the genesis hash"),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_a_tampered_chain_fails_naming_the_first_bad_line(run: Path, tamper: str) -> None:
    change, expected = TAMPERS[tamper]
    lines = _lines(run)
    change(lines)
    _write(run, lines)
    result = verify_run(run)
    assert not result.ok
    assert result.message.startswith(f"{AUDIT_FILE} {expected}"), result.message
    assert "\n" not in result.message


def test_a_truncated_last_line_fails(run: Path) -> None:
    data = (run / AUDIT_FILE).read_bytes()
    (run / AUDIT_FILE).write_bytes(data[: len(data) - 40])
    result = verify_run(run)
    assert not result.ok
    assert result.records == 6
    assert result.message == f"{AUDIT_FILE} line 7: not valid JSON — the line is truncated (a torn write)"


def test_a_last_line_without_its_newline_fails(run: Path) -> None:
    (run / AUDIT_FILE).write_bytes((run / AUDIT_FILE).read_bytes()[:-1])
    result = verify_run(run)
    assert not result.ok
    assert result.message == (
        f"{AUDIT_FILE} line 7 (seq 6): no newline at the end — the last record is truncated (a torn write)"
    )


def test_a_flipped_byte_in_a_checkpoint_file_is_named(run: Path) -> None:
    weights = run / "checkpoints" / "update_00004" / "model.safetensors"
    recorded = sha256_file(weights)
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    result = verify_run(run)
    assert not result.ok
    assert result.message == (
        f"checkpoint checkpoints/update_00004: model.safetensors sha256 mismatch "
        f"(recorded {recorded[:8]}…, now {sha256_file(weights)[:8]}…)"
    )


def test_a_deleted_checkpoint_file_is_named(run: Path) -> None:
    (run / "checkpoints" / "update_00002" / "optim" / "state.json").unlink()
    result = verify_run(run)
    assert not result.ok
    assert result.message == "checkpoint checkpoints/update_00002: optim/state.json is missing"
    shutil.rmtree(run / "checkpoints" / "update_00002")
    assert verify_run(run).message == "checkpoint checkpoints/update_00002: directory is missing"


def test_an_unrecorded_model_file_in_a_checkpoint_is_named(run: Path) -> None:
    d = run / "checkpoints" / "update_00004"
    (d / "notes.txt").write_text("not read by any loader")
    assert verify_run(run).ok
    (d / "adapter.safetensors").write_bytes(b"injected")
    result = verify_run(run)
    assert not result.ok
    assert result.message.startswith(
        "checkpoint checkpoints/update_00004: adapter.safetensors is not recorded"
    )


def test_a_resumed_log_continues_seq_and_prev_and_the_last_record_of_a_path_wins(run: Path) -> None:
    head = verify_run(run).head
    with AuditLog(run) as log:
        resume = log.append("resume", from_update=4)
        d = run / "checkpoints" / "update_00004"
        shutil.rmtree(d)
        _write_checkpoint(d, 40)
        log.checkpoint(d, update=4)
        log.append("run_end", updates=6)
    assert resume["seq"] == 7
    assert resume["prev"] == head
    result = verify_run(run)
    assert result.ok, result.message
    assert result.message == "audit chain intact: 10 records, 2 checkpoints verified"


def test_a_log_refuses_to_continue_a_broken_chain(run: Path) -> None:
    lines = _lines(run)
    _delete(lines)
    _write(run, lines)
    with pytest.raises(AuditError, match=r"line 4 \(seq 4\): seq 4 where 3 was expected"):
        AuditLog(run)


def test_a_log_refuses_reserved_fields_unknown_kinds_and_outside_checkpoints(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "run") as log:
        with pytest.raises(ValueError, match="unknown audit record kind"):
            log.append("lunch")
        with pytest.raises(ValueError, match="set by the log itself"):
            log.append("config", seq=3)
        outside = _write_checkpoint(tmp_path / "elsewhere", 1)
        with pytest.raises(ValueError, match="not inside the run directory"):
            log.checkpoint(outside)
    assert verify_run(tmp_path / "run").message == "audit chain intact: 0 records, 0 checkpoints verified"


def test_verify_run_raises_only_for_a_missing_run_or_log(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no such run directory"):
        verify_run(tmp_path / "absent")
    with pytest.raises(AuditError, match="audit.jsonl missing"):
        verify_run(tmp_path)


def test_a_signed_run_verifies_with_its_public_key(run: Path, keys: tuple[Path, Path]) -> None:
    private, public = keys
    sig_path = sign_run(run, private)
    assert sig_path == run / SIGNATURE_FILE
    doc = json.loads(sig_path.read_text())
    assert doc["head"] == verify_run(run).head
    assert doc["records"] == 7
    assert set(doc["checkpoints"]) == {"checkpoints/update_00002", "checkpoints/update_00004"}
    result = verify_run(run, pubkey=public)
    assert result.ok, result.message
    assert result.message == "audit chain intact: 7 records, 2 checkpoints verified, signature valid"
    assert (private.stat().st_mode & 0o777) == 0o600


def test_a_rehashed_rewrite_passes_the_chain_but_not_the_signature(
    run: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    sign_run(run, private)
    lines = _lines(run)
    lines[5] = _edit(lines[5], success_rate=0.95)
    prev = "0" * 64
    for i, line in enumerate(lines):  # an attacker who recomputes every prev after the edit
        lines[i] = _edit(line, prev=prev)
        prev = hashlib.sha256(lines[i]).hexdigest()
    _write(run, lines)
    assert verify_run(run).ok
    result = verify_run(run, pubkey=public)
    assert not result.ok
    assert result.message.startswith("chain head differs from the signed head (signed: 7 records"), (
        result.message
    )


def test_an_edited_or_appended_last_record_is_caught_by_the_signature(
    run: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    sign_run(run, private)
    lines = _lines(run)
    _write(run, [*lines[:-1], _edit(lines[-1], updates=400)])
    assert verify_run(run).ok  # the chain alone cannot see an edit of its last record
    assert verify_run(run, pubkey=public).message.startswith("chain head differs from the signed head")
    _write(run, lines)
    assert verify_run(run, pubkey=public).ok
    with AuditLog(run) as log:
        log.append("evaluation", version=4, success_rate=1.0)
    assert verify_run(run).ok
    assert "chain: 8 records" in verify_run(run, pubkey=public).message


def test_a_wrong_public_key_fails(run: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    sign_run(run, keys[0])
    generate_key(tmp_path / "other.pem", tmp_path / "other.pub")
    result = verify_run(run, pubkey=tmp_path / "other.pub")
    assert not result.ok
    assert result.message.startswith(
        f"signature does not verify against {tmp_path / 'other.pub'} (signed by key "
    )


def test_a_forged_signature_file_fails(run: Path, keys: tuple[Path, Path]) -> None:
    sign_run(run, keys[0])
    sig = run / SIGNATURE_FILE
    doc = json.loads(sig.read_text())
    doc["records"] = 6
    sig.write_text(json.dumps(doc))
    assert verify_run(run, pubkey=keys[1]).message == f"signature does not verify against {keys[1]}"
    sig.write_text("{}")
    assert verify_run(run, pubkey=keys[1]).message.startswith(f"{SIGNATURE_FILE}: not a signature file")


def test_an_unsigned_run_fails_with_a_key_and_passes_without(run: Path, keys: tuple[Path, Path]) -> None:
    assert verify_run(run).ok
    result = verify_run(run, pubkey=keys[1])
    assert not result.ok
    assert result.message == f"{SIGNATURE_FILE} missing: the run was not signed"


def test_sign_run_refuses_a_broken_chain_and_a_bad_key(
    run: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(AuditError, match="not an unencrypted PEM private key"):
        sign_run(run, keys[1])
    with pytest.raises(AuditError, match="not an unencrypted PEM private key"):
        sign_run(run, tmp_path / "absent.pem")
    with pytest.raises(AuditError, match="refusing to overwrite"):
        generate_key(keys[0], tmp_path / "x.pub")
    lines = _lines(run)
    _swap(lines)
    _write(run, lines)
    with pytest.raises(AuditError, match="records were reordered; refusing to sign"):
        sign_run(run, keys[0])
    assert not (run / SIGNATURE_FILE).exists()


def test_verify_checkpoint_passes_an_intact_recorded_checkpoint(run: Path) -> None:
    verify_checkpoint(run / "checkpoints" / "update_00004")
    with AuditLog(run) as log:
        log.checkpoint(_write_checkpoint(run / "sft", 0), stage="sft")
    verify_checkpoint(run / "sft")


def test_verify_checkpoint_refuses_a_flipped_byte(run: Path) -> None:
    d = run / "checkpoints" / "update_00002"
    weights = d / "model.safetensors"
    weights.write_bytes(bytes([weights.read_bytes()[0] ^ 0x80]) + weights.read_bytes()[1:])
    with pytest.raises(AuditError) as e:
        verify_checkpoint(d)
    assert str(e.value).startswith(f"{d}: model.safetensors sha256 mismatch (recorded ")
    assert str(e.value).endswith(NO_VERIFY)


def test_verify_checkpoint_refuses_an_unrecorded_checkpoint(run: Path) -> None:
    d = _write_checkpoint(run / "checkpoints" / "update_00006", 6)
    with pytest.raises(AuditError) as e:
        verify_checkpoint(d)
    assert str(e.value) == f"{d}: not recorded in {run.resolve() / AUDIT_FILE}{NO_VERIFY}"


def test_verify_checkpoint_refuses_a_broken_chain(run: Path) -> None:
    lines = _lines(run)
    _edit_middle(lines)
    _write(run, lines)
    with pytest.raises(AuditError, match=r"line 6 \(seq 5\): prev hash does not match line 5.*--no-verify"):
        verify_checkpoint(run / "checkpoints" / "update_00004")


def test_verify_checkpoint_skips_a_run_without_an_audit_log(tmp_path: Path) -> None:
    d = _write_checkpoint(tmp_path / "run" / "checkpoints" / "update_00001", 1)
    assert verify_checkpoint(d) is None
    assert verify_checkpoint(_write_checkpoint(tmp_path / "loose", 1)) is None


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Path:
    run = _make_run(tmp_path_factory.mktemp("signed"))
    sign_run(run, keys[0])
    return run


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), delta=st.integers(1, 255))
def test_any_changed_byte_breaks_the_chain_or_the_signature(
    signed_run: Path, keys: tuple[Path, Path], where: float, delta: int
) -> None:
    """A changed byte in any line but the last (its newline included) breaks the chain by itself;
    a changed byte anywhere, the last line too, fails against the signature."""
    path = signed_run / AUDIT_FILE
    original = path.read_bytes()
    last_start = original.rindex(b"\n", 0, len(original) - 1) + 1
    i = int(where * len(original))
    data = bytearray(original)
    data[i] = (data[i] + delta) % 256
    path.write_bytes(bytes(data))
    try:
        assert not verify_run(signed_run, pubkey=keys[1]).ok
        if i < last_start:
            assert not verify_run(signed_run).ok
    finally:
        path.write_bytes(original)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=50, deadline=None)
@given(fields=st.lists(st.dictionaries(st.sampled_from(["a", "b", "version", "é"]), JSON_VALUES), max_size=5))
def test_any_json_fields_append_to_an_intact_chain(tmp_path_factory: pytest.TempPathFactory, fields) -> None:
    run = tmp_path_factory.mktemp("fields")
    with AuditLog(run) as log:
        written = [log.append("evaluation", **f) for f in fields]
    assert [json.loads(line) for line in _lines(run)] == written
    result = verify_run(run)
    assert result.ok, result.message
    assert result.records == len(fields)
