"""
The documentation covers the code, checked without building it: the API reference (docs/api.rst) documents every
public name, and every parameter table of the user guide lists the real parameters and defaults.

Public modules are the ``art_latent`` modules whose dotted name has no part starting with ``_``. A module's public
names are its ``__all__`` or, without one, its top-level functions and classes whose names do not start with ``_``;
the top-level package's are ``art_latent._EXPORTS``. Each public name is followed through ``from ... import`` to the
module that defines it; it is documented when docs/api.rst has, for that module, an ``automodule`` whose ``:members:``
reaches it (all members or a member list naming it; either way autodoc skips a function or class without a
docstring and a constant without a ``#:`` comment), or an ``autoclass`` / ``autofunction`` / ``autodata`` /
``autoexception`` directive naming it.

A parameter table is a ``list-table`` preceded by the comment ``.. parameters of art_latent.module.Class`` (or
``...Class.method``; default ``__init__``): one row per parameter, ``name`` in the first cell and, in the second, the
default as a Python expression in double back-quotes or ``required``; ``**kwargs`` rows have an empty default.

The source files are parsed with ``ast``: neither torch nor ART is imported, and no Sphinx build is needed.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

import art_latent

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "art_latent"
DOCS = ROOT / "docs"
API_RST = DOCS / "api.rst"

_DIRECTIVE = re.compile(r"^\.\. (auto\w+):: *(\S+)\s*$")
_OPTION = re.compile(r"^ +:([\w-]+):(.*)$")
_CONTINUATION = re.compile(r"^ {4,}(\S.*)$")
_OBJECT_DIRECTIVES = {"autoclass", "autofunction", "autodata", "autoexception", "autoattribute", "automethod"}


def public_modules() -> list[str]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not any(part.startswith("_") for part in parts):
            modules.append(".".join(parts))
    return modules


def module_path(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@cache
def parse(module: str) -> tuple[ast.Module, list[str]]:
    source = module_path(module).read_text(encoding="utf-8")
    return ast.parse(source), source.splitlines()


@cache
def definitions(module: str) -> dict[str, ast.stmt]:
    """Top-level functions, classes and assigned names of `module`."""
    tree, _ = parse(module)
    found: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found[node.target.id] = node
    return found


@cache
def imported_from(module: str) -> dict[str, str]:
    """Names `module` imports from other art_latent modules: name -> source module."""
    tree, _ = parse(module)
    package = module if module_path(module).name == "__init__.py" else module.rpartition(".")[0]
    found = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                source = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source == "art_latent" or source.startswith("art_latent."):
                for alias in node.names:
                    found[alias.asname or alias.name] = source
    return found


def public_names(module: str) -> list[str]:
    if module == "art_latent":
        return sorted(art_latent._EXPORTS)
    tree, _ = parse(module)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return [
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_")
    ]


def defining_module(module: str, name: str) -> str:
    """The module whose source defines `name`, following re-exports (and ``_EXPORTS`` for the package)."""
    seen = set()
    if module == "art_latent" and name in art_latent._EXPORTS:
        module = art_latent._EXPORTS[name]
    while (module, name) not in seen:
        seen.add((module, name))
        if name in definitions(module):
            return module
        source = imported_from(module).get(name)
        if source is None:
            raise AssertionError(f"{module}.{name} is neither defined in nor imported into {module}")
        module = source
    raise AssertionError(f"import cycle for {module}.{name}")


def has_doc(module: str, name: str) -> bool:
    """Whether autodoc's ``:members:`` (without ``:undoc-members:``) picks `name` up."""
    node = definitions(module)[name]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return ast.get_docstring(node) is not None
    _, lines = parse(module)
    before = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
    tree, _ = parse(module)
    index = tree.body.index(node)
    after = tree.body[index + 1] if index + 1 < len(tree.body) else None
    docstring_after = (
        isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)
    )
    return before.startswith("#:") or docstring_after


@cache
def api_directives() -> tuple[dict[str, dict[str, str]], set[str]]:
    """docs/api.rst's ``automodule`` directives (module -> options) and the objects named by other auto directives."""
    modules: dict[str, dict[str, str]] = {}
    objects: set[str] = set()
    options: dict[str, str] | None = None
    last = None
    for line in API_RST.read_text(encoding="utf-8").splitlines():
        directive = _DIRECTIVE.match(line)
        if directive:
            kind, target = directive.groups()
            options = {}
            if kind == "automodule":
                modules[target] = options
            elif kind in _OBJECT_DIRECTIVES:
                objects.add(target)
            last = None
            continue
        if options is None:
            continue
        option = _OPTION.match(line)
        if option:
            last = option.group(1)
            options[last] = option.group(2).strip()
        elif last is not None and _CONTINUATION.match(line) and not line.strip().startswith(":"):
            options[last] += " " + line.strip()
        elif line.strip():
            options, last = None, None
    return modules, objects


def members_option(module: str) -> set[str] | None:
    """The member names given to ``:members:`` (empty set: all members); None without ``:members:``."""
    modules, _ = api_directives()
    options = modules.get(module, {})
    if "members" not in options or "no-index" in options or "noindex" in options:
        return None
    value = options["members"]
    return {name.strip() for name in value.split(",") if name.strip()}


def is_documented(module: str, name: str) -> bool:
    _, objects = api_directives()
    if f"{module}.{name}" in objects:
        return True
    members = members_option(module)
    if members is None:
        return False
    modules, _ = api_directives()
    excluded = {n.strip() for n in modules[module].get("exclude-members", "").split(",")}
    if name in excluded:
        return False
    # Like autodoc: a member without a docstring (or ``#:`` comment) is skipped even when named in the list.
    covered = name in members or not members
    return covered and ("undoc-members" in modules[module] or has_doc(module, name))


def test_every_public_module_has_an_automodule_with_members():
    modules, _ = api_directives()
    missing = [m for m in public_modules() if m not in modules]
    assert not missing, f"public modules without an automodule in docs/api.rst: {missing}"
    without_members = [m for m in public_modules() if members_option(m) is None]
    assert not without_members, f"automodule without :members: (or with :no-index:) in docs/api.rst: {without_members}"


def test_every_public_name_is_documented():
    undocumented = []
    for module in public_modules():
        for name in public_names(module):
            origin = defining_module(module, name)
            if not is_documented(origin, name):
                undocumented.append(f"{module}.{name} (defined in {origin})")
    assert not undocumented, f"public names the API reference does not document: {undocumented}"


def test_every_top_level_export_is_documented():
    assert set(art_latent.__all__) == set(art_latent._EXPORTS) | {"__version__"}
    undocumented = [name for name in art_latent._EXPORTS
                    if not is_documented(defining_module("art_latent", name), name)]
    assert not undocumented, f"art_latent exports the API reference does not document: {undocumented}"


def test_the_checker_sees_the_package():
    modules = public_modules()
    assert "art_latent" in modules and "art_latent.trainers.hldr" in modules
    assert all(not part.startswith("_") for m in modules for part in m.split("."))
    assert defining_module("art_latent", "HLDRTrainer") == "art_latent.trainers.hldr"
    assert defining_module("art_latent.trainers", "LatentTrainer") == "art_latent.trainers.base"


# ---------------------------------------------------------------------------------------------- parameter tables

_TABLE_MARKER = re.compile(r"^\.\. parameters of (\S+)\s*$")
_ROW = re.compile(r"^   \* - ?(.*)$")
_CELL = re.compile(r"^     - ?(.*)$")
_CELL_CONTINUATION = re.compile(r"^       +(\S.*)$")
_LITERAL = re.compile(r"^``(.*)``$")

#: Classes whose constructor parameters the user guide must tabulate (besides every exported trainer).
TABULATED = ("FeatureGuidedDenoiser", "LayerSustainabilityAnalysis", "RobustnessReport")


def parameter_tables() -> list[tuple[str, str, list[list[str]]]]:
    """``(file, target, rows)`` of every marked table in the documentation (header row dropped)."""
    tables = []
    for path in sorted(DOCS.rglob("*.rst")):
        if "_build" in path.parts:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            marker = _TABLE_MARKER.match(line)
            if marker:
                tables.append((str(path.relative_to(ROOT)), marker.group(1), _list_table(lines, index + 1)))
    return tables


def _list_table(lines: list[str], start: int) -> list[list[str]]:
    begin = next(i for i in range(start, len(lines)) if lines[i].startswith(".. list-table::"))
    rows: list[list[str]] = []
    header_rows = 0
    for line in lines[begin + 1 :]:
        option = re.match(r"^   :header-rows: (\d+)", line)
        if option:
            header_rows = int(option.group(1))
        elif _ROW.match(line):
            rows.append([_ROW.match(line).group(1).strip()])
        elif rows and _CELL.match(line):
            rows[-1].append(_CELL.match(line).group(1).strip())
        elif rows and _CELL_CONTINUATION.match(line):
            rows[-1][-1] += " " + line.strip()
        elif line.strip() and not line.startswith("   "):
            break
    return rows[header_rows:]


def _split_target(target: str) -> tuple[str, str, str]:
    """``art_latent.a.b.Class[.method]`` -> (module, class, method)."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if module_path(module).exists():
            rest = parts[cut:]
            return module, rest[0], rest[1] if len(rest) > 1 else "__init__"
    raise AssertionError(f"no module for {target}")


def _constant(module: str, name: str, seen: frozenset = frozenset()) -> object:
    """The value of the constant `name` as seen from `module` (defined there, or imported from an art_latent module)."""
    assert (module, name) not in seen, f"import cycle resolving {module}.{name}"
    seen = seen | {(module, name)}
    node = definitions(module).get(name)
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
        return _evaluate(node.value, module, seen)
    source = imported_from(module).get(name)
    assert source is not None, f"{name} is not a constant of {module}"
    return _constant(source, name, seen)


def _evaluate(node: ast.expr | str, module: str | None = None, seen: frozenset = frozenset()) -> object:
    """Evaluate a constant expression (source text or node); names are constants of `module`."""
    tree = ast.parse(node, mode="eval").body if isinstance(node, str) else node
    names = {n.id: _constant(module, n.id, seen) for n in ast.walk(tree) if isinstance(n, ast.Name) and module}
    return eval(compile(ast.Expression(tree), "<default>", "eval"), {"__builtins__": {}}, names)  # noqa: S307


def signature(target: str) -> dict[str, object]:
    """Parameter name (``**name`` for var-keyword) -> default value, or ``REQUIRED``; ``self`` dropped."""
    module, cls, method = _split_target(target)
    class_node = definitions(module).get(cls)
    assert isinstance(class_node, ast.ClassDef), f"{target}: no class {cls} in {module}"
    function = next((n for n in class_node.body if isinstance(n, ast.FunctionDef) and n.name == method), None)
    assert function is not None, f"{target}: {cls} defines no {method}"
    args = function.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out: dict[str, object] = {}
    for arg, default in [*zip(positional, defaults, strict=True), *zip(args.kwonlyargs, args.kw_defaults, strict=True)]:
        if arg.arg not in ("self", "cls"):
            out[arg.arg] = REQUIRED if default is None else _evaluate(default, module)
    if args.vararg is not None:
        out["*" + args.vararg.arg] = REQUIRED
    if args.kwarg is not None:
        out["**" + args.kwarg.arg] = REQUIRED
    return out


REQUIRED = object()


def test_parameter_tables_match_the_code():
    tables = parameter_tables()
    assert tables, "no parameter table found in docs/"
    problems = []
    for path, target, rows in tables:
        expected = signature(target)
        documented = {}
        for row in rows:
            name = _LITERAL.match(row[0])
            if name is None or len(row) < 2:
                problems.append(f"{path}: {target}: malformed row {row}")
                continue
            documented[name.group(1)] = row[1]
        if list(documented) != list(expected):
            problems.append(f"{path}: {target}: rows {list(documented)} != parameters {list(expected)}")
            continue
        for name, cell in documented.items():
            default = expected[name]
            if name.startswith("*"):
                if cell:
                    problems.append(f"{path}: {target}: {name} has a default cell {cell!r}")
            elif default is REQUIRED:
                if cell != "required":
                    problems.append(f"{path}: {target}: {name} is required, the table says {cell!r}")
            else:
                literal = _LITERAL.match(cell)
                if literal is None or _evaluate(literal.group(1)) != default:
                    problems.append(f"{path}: {target}: {name} defaults to {default!r}, the table says {cell!r}")
    assert not problems, "\n".join(problems)


def test_every_defense_has_a_parameter_table():
    tabulated = {target.rpartition(".")[2] for _, target, _ in parameter_tables()}
    wanted = {name for name in art_latent._EXPORTS if name.endswith("Trainer")} | set(TABULATED)
    assert not wanted - tabulated, f"no parameter table in docs/ for {sorted(wanted - tabulated)}"


def test_the_built_docs_render_math_offline():
    """The equations use the MathJax copy in _static (sphinx-mathjax-offline), never a CDN; long code lines wrap."""
    built = Path(__file__).resolve().parents[1] / "docs" / "_build" / "html"
    if not (built / "index.html").exists():
        pytest.skip("the docs are not built (CI builds them before the tests: sphinx-build -W -b html docs ...)")
    page = (built / "defenses" / "afd.html").read_text()
    assert 'src="../_static/mathjax/tex-chtml.js"' in page and "\\(" in page
    assert (built / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    assert not [p.name for p in built.rglob("*.html") if "cdn.jsdelivr" in p.read_text() or "mathjax@" in p.read_text()]
    assert "pre-wrap" in (built / "_static" / "custom.css").read_text()
