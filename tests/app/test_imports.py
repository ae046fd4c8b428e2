"""The app's web stack is optional: the CLI and the app's modules import without FastAPI or
uvicorn, and the command names the install line when they are missing."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_cli_and_app_modules_do_not_import_the_web_stack():
    mods = _modules_after(
        "import grounded_sam.cli; grounded_sam.cli.build_parser(); import grounded_sam.app; "
        "import grounded_sam.app.server, grounded_sam.app.store, grounded_sam.app.service"
    )
    assert not {m for m in mods if m.split(".")[0] in ("fastapi", "uvicorn", "starlette")}


def test_missing_fastapi_is_one_error_line_with_the_install_hint(tmp_path):
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "from grounded_sam.cli import main\n"
        f"sys.exit(main(['app', {str(tmp_path / 'ds')!r}, '--classes', 'cat', '--port', '0']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and 'pip install "grounded-sam[app]"' in lines[0]
    assert not (tmp_path / "ds").exists()
