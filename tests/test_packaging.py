"""One installed package: a wheel holds `tokenward` alone, with the addon, the harness and the
fixtures inside it, and the installed command tells where its mitmproxy script is."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tokenward.cli import main
from tokenward.proxy import ADDON_SCRIPT

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_the_wheel_holds_one_import_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tokenward-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"tokenward"}
    for module in ("addons/tokenward.py", "addons/gateway.py", "harness/oracle.py"):
        assert f"tokenward/{module}" in names
    assert "tokenward/fixtures/upstream.py" in names
    assert "tokenward/console/templates/base.html" in names or any(
        name.startswith("tokenward/console/templates/") for name in names
    )


def test_addon_path_names_the_mitmproxy_script() -> None:
    shown = CliRunner().invoke(main, ["addon-path"])
    assert shown.exit_code == 0
    script = Path(shown.output.strip())
    assert script == ADDON_SCRIPT and script.name == "tokenward.py" and script.is_file()
    assert "addons = [TokenWard()]" in script.read_text()
