"""The ``encdec`` command, run for real in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import FIXTURES


def _run(*args):
    return subprocess.run([sys.executable, "-m", "conversion.cli", *args], capture_output=True, text=True)


def test_inspect_reports_parts_and_dtypes():
    out = _run("inspect", str(FIXTURES / "bert2gpt2_proj" / "pt"))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["architecture"] == "bert2gpt2"
    assert set(info["parameters"]) == {"encoder", "decoder", "enc_to_dec_proj"}
    assert info["parameters"]["enc_to_dec_proj"] == 36 * 45 + 45
    assert info["dtypes"] == {"F32": sum(info["dtypes"].values())}


def test_bad_path_is_a_clear_error_and_exit_code(tmp_path):
    out = _run("inspect", str(tmp_path / "nope"))
    assert out.returncode == 2 and "encdec inspect:" in out.stderr and "Traceback" not in out.stderr
