"""`sae info`, `sae verify`, the placeholders, and bad inputs: one line, exit 2, nothing changed."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_one_line_error, snapshot

ACTIVATIONS = "hooks/synthetic.hook_resid/activations"


def test_info_human_and_json(run_cli, small_store):
    human = run_cli("info", small_store)
    assert human.exit_code == 0
    assert "4,096 committed" in human.stdout and "512 held-out rows" in human.stdout
    assert "synthetic.hook_resid: d=64" in human.stdout
    result = run_cli("info", small_store, "--json")
    info = json.loads(result.stdout)
    assert info["rows"] == {
        "committed": 4096,
        "capacity": 4096,
        "holdout": 512,
        "train": 3584,
        "committed_ranges": [[0, 4096]],
    }
    assert info["shards"] == {"count": 1, "rows": [[0, 4096]]}
    assert info["hooks"] == {"synthetic.hook_resid": {"d": 64, "gradients": True}}
    assert info["complete"] is True
    assert info["bytes_per_row"] > 64 * 2 * 2  # activations and gradients, two bytes each


def test_verify_accepts_a_sound_store(run_cli, small_store):
    result = run_cli("verify", small_store)
    assert result.exit_code == 0, result.stderr
    assert "ok:" in result.stdout


def test_verify_names_a_chunk_with_a_flipped_byte(run_cli, small_store):
    chunk = small_store / ACTIVATIONS / "c" / "5" / "0"
    data = bytearray(chunk.read_bytes())
    data[1000] ^= 0x10
    chunk.write_bytes(bytes(data))
    result = run_cli("verify", small_store)
    assert result.exit_code == 1
    assert f"{ACTIVATIONS} chunk 5 (rows 1280-1535): checksum mismatch" in result.stderr


def test_verify_names_a_missing_chunk(run_cli, small_store):
    (small_store / "tokens" / "c" / "3").unlink()
    result = run_cli("verify", small_store)
    assert result.exit_code == 1
    assert "tokens chunk 3 (rows 768-1023): chunk is missing" in result.stderr


def test_not_a_store(run_cli, tmp_path):
    assert_one_line_error(run_cli("info", tmp_path / "missing"), "is not a saekit activation store")
    (tmp_path / "file.txt").write_text("hello")
    assert_one_line_error(
        run_cli("verify", tmp_path / "file.txt"), "is not a saekit activation store"
    )
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    before = snapshot(tmp_path)
    assert_one_line_error(run_cli("info", tmp_path / "dir"), "is not a saekit activation store")
    assert snapshot(tmp_path) == before


def test_newer_format_version(run_cli, small_store, tmp_path):
    meta_path = small_store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    before = snapshot(small_store)
    assert_one_line_error(run_cli("info", small_store), "format version 99", "upgrade saekit")
    assert snapshot(small_store) == before


def test_missing_array(run_cli, small_store):
    shutil.rmtree(small_store / "hooks/synthetic.hook_resid/gradients")
    before = snapshot(small_store)
    verify = run_cli("verify", small_store)
    assert verify.exit_code == 1
    assert (
        verify.stderr
        == "corrupt: metadata: array 'hooks/synthetic.hook_resid/gradients' is missing\n"
    )
    info = run_cli("info", small_store)
    assert info.exit_code == 1 and info.stderr.count("\n") == 1
    assert (
        "damaged metadata: array 'hooks/synthetic.hook_resid/gradients' is missing" in info.stderr
    )
    assert snapshot(small_store) == before


def test_bad_storage_options(run_cli, small_store):
    assert_one_line_error(run_cli("info", small_store, "--storage-options", "{oops"), "JSON object")


def test_usage_errors_are_one_line(run_cli):
    assert_one_line_error(run_cli("info"), "Missing", "sae info --help")
    assert_one_line_error(run_cli("info", "x", "--bogus"), "No such option")


@pytest.mark.parametrize("command", ["harvest", "train", "eval", "info", "verify", "demo"])
def test_every_command_has_help(run_cli, command):
    result = run_cli(command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_console_script_entry_point(small_store):
    """The installed `sae` script is wired to the same CLI (exit codes included)."""
    sae = str(Path(sys.executable).parent / "sae")
    ok = subprocess.run([sae, "verify", str(small_store)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sae, "info", str(small_store / "nope")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
