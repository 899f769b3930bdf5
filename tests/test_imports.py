"""The package's import graph: acyclic (imports inside functions included) and following DESIGN.md's layer table.

Every `import` / `from ... import` statement of every module is parsed (not executed), wherever it stands. A
module `tokgen_jax.<folder>.<name>` belongs to the layer of its folder; modules directly under `tokgen_jax/` are
the top layer, and so is `bench/` (DESIGN lists it there). `tokgen_jax.errors` (the exception types) may be
imported by every layer. The one extension of the table: the micro-benchmarks in `bench/` time one component at
a time, so they may import any layer and the presets in `configs/`.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "tokgen_jax"
BASE = {"tokgen_jax.errors"}
# layer -> the layers its modules may import (besides their own layer and BASE), from DESIGN.md's table.
ALLOWED = {
    "nn": set(),
    "quantizers": {"nn"},
    "tokenizers": {"nn", "quantizers"},
    "generators": {"nn"},
    "losses": {"nn"},
    "metrics": {"nn", "losses", "data"},
    "data": {"nn"},
    "convert": {"nn", "quantizers", "tokenizers", "generators", "losses", "metrics", "data"},
    "tasks": {"nn", "quantizers", "tokenizers", "generators", "losses", "metrics", "data", "convert"},
    "top": {"tasks", "data"},
}
BENCH_EXTRA = {"nn", "quantizers", "tokenizers", "generators", "losses", "metrics", "convert", "configs"}


def _module_name(path: pathlib.Path) -> str:
  parts = ("tokgen_jax",) + path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in ROOT.rglob("*.py")}


def _layer(module: str) -> str:
  parts = module.split(".")
  if parts[1:2] == ["configs"]:
    return "configs"
  package = ROOT.joinpath(*parts[1:])
  if len(parts) == 1 or (len(parts) == 2 and not package.is_dir()) or parts[1] == "bench":
    return "top"
  return parts[1]


def _resolve(target: str) -> str | None:
  """The package module a dotted import names (a name imported from a module resolves to that module)."""
  while target and target not in MODULES:
    target = target.rpartition(".")[0]
  return target or None


def _imports(module: str) -> set[str]:
  path = MODULES[module]
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      targets = [f"{base}.{alias.name}" for alias in node.names]
    else:
      continue
    for target in targets:
      if target.startswith("tokgen_jax.configs"):
        found.add("tokgen_jax.configs")
      elif target.startswith("tokgen_jax") and (resolved := _resolve(target)) not in (None, module):
        found.add(resolved)
  return found


GRAPH = {module: _imports(module) for module in MODULES}


def test_import_graph_has_no_cycles():
  state: dict[str, str] = {}

  def visit(module: str, path: list[str]) -> None:
    state[module] = "open"
    for target in sorted(GRAPH.get(module, ())):
      if state.get(target) == "open":
        cycle = path[path.index(target):] + [target] if target in path else [module, target]
        raise AssertionError("import cycle: " + " -> ".join(cycle))
      if target not in state:
        visit(target, path + [target])
    state[module] = "done"

  for module in sorted(GRAPH):
    if module not in state:
      visit(module, [module])


def test_every_import_follows_the_layer_table():
  violations = []
  for module, targets in GRAPH.items():
    layer = _layer(module)
    for target in targets:
      target_layer = _layer(target)
      allowed = ALLOWED[layer] | (BENCH_EXTRA if module.startswith("tokgen_jax.bench") else set())
      if target in BASE or target_layer == layer or target_layer in allowed:
        continue
      violations.append(f"{module} ({layer}) imports {target} ({target_layer})")
  assert not violations, "\n".join(sorted(violations))


def test_the_checker_sees_imports_inside_functions_and_relative_imports():
  assert "tokgen_jax.convert.lpips" in GRAPH["tokgen_jax.tasks.autoencoder"]  # imported inside a function
  assert _layer("tokgen_jax.run") == "top" and _layer("tokgen_jax.data.streams") == "data"
  assert _layer("tokgen_jax.bench.training") == "top" and _layer("tokgen_jax.nn.rope") == "nn"
