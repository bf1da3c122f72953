"""bncheck.infra.io: output paths checked before work, files written atomically with the umask's
mode."""

from __future__ import annotations

import os
import stat

import pytest

from bncheck.errors import InvalidArgument, OutputError, UsageError
from bncheck.infra.io import check_output_path, file_mode, write_atomic, write_json_atomic


def test_output_error_is_a_usage_error_and_a_value_error():
    assert issubclass(OutputError, UsageError)
    assert issubclass(OutputError, InvalidArgument) and issubclass(OutputError, ValueError)


def test_check_output_path_accepts_a_writable_folder(tmp_path):
    assert check_output_path(tmp_path / "r.json", "--json") == tmp_path / "r.json"
    assert os.listdir(tmp_path) == []  # the probe file is gone


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "nodir" / "r.json", "folder .* does not exist"),
    (lambda p: p, "which is a directory"),
    (lambda p: (p / "f").write_text("") or p / "f" / "r.json", "is not a directory"),
    (lambda p: p / "r.txt", "to end in .json"),
])
def test_check_output_path_rejects(tmp_path, make, match):
    with pytest.raises(OutputError, match=match) as info:
        check_output_path(make(tmp_path), "--json", suffix=".json")
    assert "--json=" in str(info.value)


def test_check_output_path_rejects_a_read_only_file_system():
    # /proc is mounted read-only for new files everywhere, also for root (chmod 0555 is not).
    with pytest.raises(OutputError, match="is not writable"):
        check_output_path("/proc/bncheck-report.json", "--json")


def test_write_atomic_replaces_all_or_nothing(tmp_path):
    a, b = tmp_path / "m.onnx", tmp_path / "m.json"
    a.write_bytes(b"old")
    write_atomic({a: b"new", b: b"{}"})
    assert a.read_bytes() == b"new" and b.read_bytes() == b"{}"
    assert stat.S_IMODE(a.stat().st_mode) == file_mode()
    with pytest.raises(OutputError, match="no such folder"):
        write_atomic({a: b"newer", tmp_path / "no" / "x": b""})
    assert a.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]


def test_write_json_atomic_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_json_atomic(tmp_path / "r.json", {"ok": True})
    finally:
        os.umask(old)
    assert path.read_text() == '{\n  "ok": true\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
