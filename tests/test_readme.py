"""The README's commands and examples are true."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _bash_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", README, re.S)]


def test_readme_starts_with_two_commands_and_ci_runs_the_second():
    setup, tests = _bash_blocks()[:2]
    assert "torch==2.13.0" in setup and "torch==2.13.0" in tests
    assert tests.endswith("python -m pytest")
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_readme_python_examples_run():
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        exec(compile(block, "README.md", "exec"), {})


def test_readme_show_output_is_current(capsys):
    from derive.cli import main

    block = re.search(r"```text\n\$ dynorm show dyisru\n(.*?)```", README, re.S).group(1)
    main(["show", "dyisru"])
    got = capsys.readouterr().out
    assert [line.rstrip() for line in got.splitlines()] == [line.rstrip() for line in block.splitlines()]
