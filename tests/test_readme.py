"""README.md's python code runs as written, so its examples never rot.

Every ```python block is executed; the blocks of one "## " section run in order as one program
(so a section may build on an earlier block), in a fresh subprocess whose working directory is a
temporary folder (files an example writes land there). Other fences (```bash, ```text) are not
executed.
"""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
FENCE = re.compile(r"^```(\w*)[ \t]*$")


def python_blocks(text: str) -> dict:
  """{section title: its ```python blocks joined in order}, sections by "## " headings; code
  before the first heading goes under ""."""
  sections, section, language, lines = {}, "", None, []
  for line in text.splitlines():
    fence = FENCE.match(line)
    if language is None and fence:
      language, lines = fence.group(1), []
    elif language is not None and line.rstrip() == "```":
      if language == "python":
        sections.setdefault(section, []).append("\n".join(lines))
      language = None
    elif language is not None:
      lines.append(line)
    elif line.startswith("## "):
      section = line[3:].strip()
  if language is not None:
    raise ValueError(f"README.md: a ```{language} block in section {section!r} is not closed")
  return {title: "\n\n".join(blocks) for title, blocks in sections.items()}


def test_python_blocks_are_found_by_section_and_other_fences_are_not():
  text = "\n".join([
      "# top", "```python", "a = 1", "```", "## One", "```bash", "rm -rf /", "```",
      "```python", "b = a", "```", "text", "```python", "c = b", "```", "## Two", "```text",
      "d = 4", "```"])
  assert python_blocks(text) == {"": "a = 1", "One": "b = a\n\nc = b"}
  with pytest.raises(ValueError, match="not closed"):
    python_blocks("## One\n```python\nx = 1\n")


SECTIONS = python_blocks(open(README, encoding="utf-8").read())
BYOM = "Use it on your own model"


def test_the_byom_section_has_code():
  assert BYOM in SECTIONS


@pytest.mark.parametrize("title", [
    pytest.param(title, marks=pytest.mark.slow) if title == BYOM else title
    for title in sorted(SECTIONS)])
def test_readme_python_runs(tmp_path, title):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  script = tmp_path / "readme_example.py"
  script.write_text(SECTIONS[title], encoding="utf-8")
  result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, f"README section {title!r}:\n{result.stderr[-3000:]}"
  if title == BYOM:
    # The example's own checks are asserts inside it; here, that it drew its figure.
    assert (tmp_path / "spectrum.png").stat().st_size > 1000
