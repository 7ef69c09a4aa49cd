"""The docs stay true: every setting, option and command documented where a user looks."""

from __future__ import annotations

import re
import subprocess

import click
import yaml

import tap_vero_webhook
from tap_vero_webhook import data_dir
from tap_vero_webhook.cli import ENV_PREFIX, main
from tap_vero_webhook.listener.settings import ListenerSettings, LogSettings, ServerSettings
from tap_vero_webhook.settings import settings_of
from tap_vero_webhook.tap_settings import TapSettings
from tests.helpers import ROOT, TAP, VERO_WEBHOOK

SERVE_SETTINGS = (ListenerSettings, ServerSettings, LogSettings)
PACKAGE = ROOT / "tap_vero_webhook"


def settings_table(markdown: str) -> str:
    """The markdown table of settings that `--about --format markdown` prints."""
    match = re.search(r"^\| Setting .*?(?=\n\n|\n[^|]|\Z)", markdown, re.M | re.S)
    assert match, markdown[:500]
    return match.group(0).strip()


def test_the_readme_tap_settings_table_is_what_the_tap_says_about_itself():
    about = subprocess.run(
        [TAP, "--about", "--format", "markdown"], capture_output=True, text=True, check=True
    ).stdout
    readme = (ROOT / "README.md").read_text()
    assert settings_table(readme) == settings_table(about)


def test_meltano_yml_declares_exactly_the_tap_settings_and_no_other_default():
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    tap = next(p for p in project["plugins"]["extractors"] if p["name"] == "tap-vero-webhook")
    declared = {setting["name"]: setting for setting in tap["settings"]}
    assert list(declared) == [setting.name for setting in settings_of(TapSettings)]
    for setting in settings_of(TapSettings):
        if not setting.required and "value" in declared[setting.name]:
            assert declared[setting.name]["value"] == setting.default, setting.name


def test_every_serve_option_is_in_the_deployed_env_file_at_its_default():
    env_file = (ROOT / "deploy" / "vero-webhook.env").read_text()
    serve = main.commands["serve"]
    options = {param.name for param in serve.params if isinstance(param, click.Option)}
    declared = [setting for cls in SERVE_SETTINGS for setting in settings_of(cls)]
    assert options == {setting.name for setting in declared}
    for setting in declared:
        name = f"{ENV_PREFIX}{setting.name.upper()}"
        match = re.search(rf"^#?{name}=(.*)$", env_file, re.M)
        assert match, f"{name} is missing from deploy/vero-webhook.env"
        if not setting.required:
            shown = str(setting.default).lower() if isinstance(setting.default, bool) else ""
            assert match.group(1) == (shown or str(setting.default)), name


def test_every_serve_option_has_its_env_var_and_help():
    help_text = subprocess.run(
        [VERO_WEBHOOK, "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for param in main.commands["serve"].params:
        if isinstance(param, click.Option):
            expected = f"{ENV_PREFIX}{param.name.upper()}"
            assert param.envvar == expected
            assert expected in help_text, expected
            assert param.help, param.name


def commands(group: click.Group, prefix: str = "vero-webhook"):
    for name, command in group.commands.items():
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix} {name}")


def test_every_command_and_option_has_help():
    assert main.help
    found = dict(commands(main))
    assert set(found) >= {
        "vero-webhook serve",
        "vero-webhook token",
        "vero-webhook token create",
        "vero-webhook token list",
        "vero-webhook token revoke",
        "vero-webhook report",
    }
    for name, command in found.items():
        assert command.help, f"`{name}` has no help"
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"`{name} --{param.name}` has no help"
        shown = subprocess.run(
            [VERO_WEBHOOK, *name.split()[1:], "--help"], capture_output=True, text=True
        )
        assert shown.returncode == 0 and "Usage:" in shown.stdout, name


def test_the_version_is_printed():
    shown = subprocess.run([VERO_WEBHOOK, "--version"], capture_output=True, text=True)
    assert shown.stdout.strip() == f"vero-webhook {tap_vero_webhook.__version__}"


def test_the_readme_module_map_is_the_package_tree():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- module map -->", 1)[1].split("```", 2)[1]
    mapped, folders = set(), []
    for line in block.strip().splitlines()[1:]:  # below "tap_vero_webhook/"
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        folders = folders[: depth - 1]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            mapped.add("/".join([*folders, name]))
    actual = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts
    }
    assert mapped == actual


def test_operations_md_shows_the_data_directory_tree_as_defined():
    drawn = data_dir.__doc__.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    tree = "\n".join(line.removeprefix("    ") for line in drawn.splitlines())
    assert f"```\n{tree}\n```" in (ROOT / "docs" / "operations.md").read_text()


def test_docs_link_only_to_files_in_the_repository():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "bench" / "README.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
