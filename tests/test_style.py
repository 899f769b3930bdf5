"""One indentation style (2 spaces, as `[tool.pyink]` in pyproject.toml formats) in every Python file."""

import io
import pathlib
import tokenize

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _indent_widths(path: pathlib.Path) -> set[int]:
  """The widths each indentation step adds in `path`."""
  widths, stack = set(), [0]
  for token in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
    if token.type == tokenize.INDENT:
      widths.add(len(token.string) - stack[-1])
      stack.append(len(token.string))
    elif token.type == tokenize.DEDENT:
      stack.pop()
  return widths


def test_every_python_file_indents_by_two_spaces():
  files = [path for folder in ("tokgen_jax", "tests", "configs", "experiments", "launch")
           for path in (REPOSITORY / folder).rglob("*.py")]
  offenders = {str(path.relative_to(REPOSITORY)): sorted(widths) for path in files
               if (widths := _indent_widths(path)) - {2}}
  assert not offenders, offenders
