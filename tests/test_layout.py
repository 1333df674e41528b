"""The package's architecture as its imports show it (the README's table).

Parts, lowest first; a module may import its own part and the parts its row allows, never a
module's `_private` name from elsewhere:

  isometry.linalg, isometry.runtime, isometry.processes   nothing of the package
  theory    linalg
  data      nothing
  results   nothing
  engine    theory, data, results, linalg, processes
  studies   everything above; a study never another study (its own parts aside)
  cli       runtime, results, processes
  scripts   cli, studies, engine, data, results, theory
"""
import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "isometry")

ALLOWED = {
    "linalg": set(),
    "runtime": set(),
    "processes": set(),
    "theory": {"theory", "linalg"},
    "data": {"data"},
    "results": {"results"},
    "engine": {"engine", "theory", "data", "results", "linalg", "processes"},
    "studies": {"studies", "engine", "theory", "data", "results", "linalg", "processes", "cli"},
    "cli": {"runtime", "results", "processes"},
    "__init__": set(),
}
# The study modules that are parts of one study (a study may import its own parts).
STUDY_PARTS = {"gradients": {"gradients_rnn"}, "rnn_gain": {"rnn_gain_theory"}}
SHARED_STUDY_MODULES = {"harness", "cli"}


def _modules():
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        yield dotted.removesuffix(".__init__") if name == "__init__.py" else dotted, path


def _imports(path):
  """(imported isometry module, imported names) for every import of `path`."""
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("isometry"):
          yield alias.name, ()
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("isometry"):
      yield node.module, tuple(alias.name for alias in node.names)


def _part(dotted):
  parts = dotted.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


MODULES = dict(_modules())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
  part = _part(module)
  for imported, names in _imports(MODULES[module]):
    targets = [imported] + [f"{imported}.{n}" for n in names if f"{imported}.{n}" in MODULES]
    for target in targets:
      target_part = _part(target)
      assert target_part in ALLOWED[part] or target == "isometry", (
          f"{module} (part {part}) imports {target} (part {target_part})")
    for name in names:
      assert not name.startswith("_"), f"{module} imports the private name {imported}.{name}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("isometry.studies.")))
def test_no_study_imports_another(module):
  own = module.rsplit(".", 1)[1]
  for imported, names in _imports(MODULES[module]):
    for target in [imported] + [f"{imported}.{n}" for n in names]:
      if not target.startswith("isometry.studies.") or target not in MODULES:
        continue
      other = target.rsplit(".", 1)[1]
      assert other in SHARED_STUDY_MODULES | STUDY_PARTS.get(own, set()) | {own}, (
          f"study module {module} imports the study {target}")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_of_another_module_is_used(module):
  """`alias._name` where alias is an imported isometry module: a reach-in."""
  tree = ast.parse(open(MODULES[module]).read())
  aliases = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("isometry"):
      aliases |= {alias.asname or alias.name for alias in node.names}
    elif isinstance(node, ast.Import):
      aliases |= {alias.asname or alias.name.split(".")[0] for alias in node.names
                  if alias.name.startswith("isometry")}
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and node.attr.startswith("_")
        and not node.attr.startswith("__")):
      pytest.fail(f"{module} uses {node.value.id}.{node.attr}")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_library_module_is_over_600_lines(module):
  with open(MODULES[module]) as f:
    assert sum(1 for _ in f) <= 600


SCRIPTS = sorted(name for name in os.listdir(os.path.join(REPO, "scripts")) if name.endswith(".py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_thin(script):
  """A script parses flags and calls a library function: under 100 lines, no sys.path edit (the
  package is installed), and `isometry.cli` (the runtime settings) imported before jax."""
  with open(os.path.join(REPO, "scripts", script)) as f:
    text = f.read()
  assert len(text.splitlines()) < 100
  assert "sys.path" not in text
  tree = ast.parse(text)
  first = next(node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
  names = ([a.name for a in first.names] if isinstance(first, ast.Import)
           else [f"{first.module}.{a.name}" for a in first.names])
  assert "isometry.cli" in names or first.module == "absl", ast.unparse(first)


def test_the_public_face_resolves_lazily_without_side_effects():
  code = ("import os, sys; before = dict(os.environ); import isometry; "
          "assert 'jax' not in sys.modules and dict(os.environ) == before; "
          "missing = [n for n in isometry.__all__ if getattr(isometry, n, None) is None]; "
          "assert not missing, missing; print(len(isometry.__all__))")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "OPENBLAS_NUM_THREADS")}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert int(out.stdout.strip()) >= 20
