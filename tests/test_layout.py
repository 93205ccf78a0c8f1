"""The package's layout as a specification: one folder per part of the run, imports that flow one way.

    arc  <-  engines, selection, programs  <-  pretrain  <-  run  <-  kaggle

(``run`` sits above ``pretrain``: the run's joint test-time stage is the pretraining loop on the test tasks.)

Every import counts: module level, inside functions and under ``TYPE_CHECKING``, relative or absolute.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import arcttt_kaggle

PKG = Path(arcttt_kaggle.__file__).parent
# The parts and their level: a part may import its own modules and parts of a lower level, nothing else
# (so engines, selection and programs, on one level, never import each other).
LEVEL = {"arc": 0, "engines": 1, "selection": 1, "programs": 1, "pretrain": 2, "run": 3, "kaggle": 4}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PKG / rel).with_suffix(".py").exists() or (PKG / rel / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """The package modules ``path`` imports, as dotted names (``arcttt_kaggle.engines.format``)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.startswith("arcttt_kaggle")}
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = package.split(".")[: len(package.split(".")) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            if not target.startswith("arcttt_kaggle"):
                continue
            subs = {f"{target}.{a.name}" for a in n.names if is_module(f"{target}.{a.name}")}
            # ``from pkg import mod`` names the module; ``from mod import name`` (or any non-module name) the target
            out |= subs if len(subs) == len(n.names) else subs | {target}
    return {m for m in out if is_module(m) and m != me}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def part(mod: str) -> str | None:
    bits = mod.split(".")
    return bits[1] if len(bits) > 2 or (len(bits) == 2 and bits[1] in LEVEL) else None


def test_at_most_six_modules_sit_directly_in_the_package_and_every_part_is_a_folder():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 6, top
    folders = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert set(LEVEL) <= folders, set(LEVEL) - folders
    for name in LEVEL:  # each part says what it does and what it may import
        doc = ast.get_docstring(ast.parse((PKG / name / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{name}/__init__.py: no docstring naming what it may import"


def test_the_package_has_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(trail + [m, d])}"
            if d not in state:
                visit(d, trail + [m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])
    assert "arcttt_kaggle.engines.decode" in g and "arcttt_kaggle.engines.decode_dfs" in g["arcttt_kaggle.engines.decode"]
    assert not g["arcttt_kaggle.engines.engine_base"], "engine_base imports nothing of the package"


def test_no_part_imports_a_part_above_it_or_beside_it():
    bad = []
    for mod, deps in graph().items():
        mine = part(mod)
        for d in deps:
            theirs = part(d)
            if mine is None or theirs is None or theirs == mine:
                continue
            if LEVEL[theirs] >= LEVEL[mine]:
                bad.append(f"{mod} imports {d} ({mine} may not import {theirs})")
    assert not bad, "\n".join(sorted(bad))


def test_the_checker_sees_relative_absolute_and_function_level_imports(tmp_path, monkeypatch):
    """The rule checker itself: a lower part importing a higher one is caught whichever import form it uses."""
    fake = tmp_path / "arcttt_kaggle"
    for d in ("arc", "run"):
        (fake / d).mkdir(parents=True)
        (fake / d / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "run" / "config.py").write_text("X = 1\n")
    (fake / "arc" / "a.py").write_text("from ..run.config import X\n")
    (fake / "arc" / "b.py").write_text("def f():\n    import arcttt_kaggle.run.config\n")
    (fake / "arc" / "c.py").write_text("from arcttt_kaggle.run import config\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    for name in "abc":
        assert imports_of(fake / "arc" / f"{name}.py") == {"arcttt_kaggle.run.config"}, name


def test_every_part_ships_in_the_wheel():
    """pyproject lists packages by name: a new folder missing there would be absent from the Kaggle bundle."""
    import tomllib

    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {module_name(p) for p in PKG.rglob("__init__.py")}
    assert present == listed, (present - listed, listed - present)
