"""The import rules the layout stands on, checked in fresh interpreters.

The arrows point one way: the listener uses tokens and the spool; the tap uses the
spool and never imports the listener (nor Flask, nor waitress); the spool knows
neither HTTP nor Singer; token commands and reports need no web framework.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.helpers import ROOT

WEB = ("flask", "waitress", "werkzeug")


def imported_by(module: str) -> set[str]:
    """Every module loaded by importing `module` in a new interpreter."""
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def roots(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@pytest.mark.parametrize(
    "module",
    [
        "tap_vero_webhook.tap",
        "tap_vero_webhook.streams",
        "tap_vero_webhook.tap_settings",
        "tap_vero_webhook.singer_output",
        "tap_vero_webhook.catalog",
        "tap_vero_webhook.record_pipes",
    ],
)
def test_the_tap_imports_neither_the_listener_nor_a_web_framework(module):
    loaded = imported_by(module)
    assert not roots(loaded) & set(WEB), sorted(roots(loaded) & set(WEB))
    assert not {name for name in loaded if name.startswith("tap_vero_webhook.listener")}


def test_the_spool_knows_neither_http_nor_singer():
    loaded = imported_by("tap_vero_webhook.spool")
    assert not roots(loaded) & {*WEB, "singer_sdk"}
    assert not {name for name in loaded if name.startswith("tap_vero_webhook.listener")}


def test_tokens_do_not_import_the_spool():
    assert "tap_vero_webhook.spool" not in imported_by("tap_vero_webhook.listener.tokens")


def test_the_operators_command_loads_flask_only_to_serve():
    loaded = imported_by("tap_vero_webhook.cli")
    assert not roots(loaded) & set(WEB)
    assert "tap_vero_webhook.report" not in loaded  # loaded by `report` itself


def test_no_test_module_imports_another_or_conftest():
    for path in sorted((ROOT / "tests").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("tests.test_", "tests.conftest")), (path.name, name)


def test_python_m_runs_the_tap():
    done = subprocess.run(
        [sys.executable, "-m", "tap_vero_webhook", "--about", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert '"name": "tap-vero-webhook"' in done.stdout
