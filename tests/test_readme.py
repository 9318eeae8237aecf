"""The README tells the truth: its generated references are current, and its commands exist."""

import re

from app.docs import README, generated_readme

MAKEFILE = README.with_name("Makefile")


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", MAKEFILE.read_text(), re.M))


def test_the_generated_references_are_current():
    """Run `make docs` after changing the spec or the settings."""
    text = README.read_text()
    assert generated_readme(text) == text


def test_the_readme_opens_with_the_two_commands_and_they_are_make_targets():
    first_block = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make serve", "make test"]
    assert {"serve", "test", "install"} <= make_targets()


def test_every_make_command_the_readme_mentions_exists():
    mentioned = set(re.findall(r"\bmake ([a-z][a-z-]*)", README.read_text()))
    assert mentioned <= make_targets(), mentioned - make_targets()


def test_the_examples_and_scripts_the_readme_names_exist():
    root = README.parent
    for path in re.findall(r"\b((?:examples|bench)/[\w./-]+\.(?:py|yaml))", README.read_text()):
        assert (root / path).is_file(), path
