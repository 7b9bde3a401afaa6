"""What importing the package really loads: the CLI, the API and the store start without
torch (the contracts in pyproject.toml, checked by test_import_contracts.py, say who may
import what; this proves it at run time, guarded imports included), and every third-party
import is a declared dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import alice_spool

PACKAGE = Path(alice_spool.__file__).parent
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "safetensors")


def internal_imports(path: Path) -> tuple[set[str], set[str]]:
    """(alice_spool modules, third-party top-level packages) a file imports, anywhere."""
    module_parts = path.relative_to(PACKAGE).with_suffix("").parts
    internal: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root, _, rest = alias.name.partition(".")
                if root == "alice_spool":
                    internal.add(rest.split(".")[0])
                else:
                    external.add(root)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                root, _, rest = (node.module or "").partition(".")
                if root == "alice_spool":
                    internal.add(rest.split(".")[0] if rest else node.names[0].name)
                else:
                    external.add(root)
                continue
            base = list(module_parts[: len(module_parts) - node.level])
            target = [*base, *(node.module.split(".") if node.module else [])]
            if target:
                internal.add(target[0])
            else:
                internal.update(alias.name for alias in node.names)
    return internal, external


def sources() -> dict[Path, str]:
    """Each source file with the name of the top-level module (or package) it belongs to."""
    return {
        path: path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for path in PACKAGE.rglob("*.py")
    }


def test_the_walker_sees_imports() -> None:
    internal, external = internal_imports(PACKAGE / "cli" / "app.py")
    assert {"config", "store", "errors"} <= internal
    assert "click" in external


def test_importing_the_cli_store_and_api_loads_no_heavy_library(tmp_path: Path) -> None:
    # Stand-ins for the heavy libraries that leave a mark and refuse to load, so even a
    # guarded `try: import torch` is caught.
    marks = tmp_path / "marks"
    marks.mkdir()
    for name in HEAVY:
        package = tmp_path / "fake" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(
            f"open({str(marks / name)!r}, 'w').close()\n"
            f"raise ImportError('{name} must not be imported here')\n"
        )
    probe = textwrap.dedent(
        """
        import importlib, sys
        for name in ("alice_spool.cli", "alice_spool.store", "alice_spool.api",
                     "alice_spool.library.registry", "alice_spool.config", "alice_spool.migrate"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:  # a module that does not exist yet is fine
                    raise
        from alice_spool.cli import cli
        cli.main(["--help"], standalone_mode=False)
        print(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}))
        """
    ).format(heavy=set(HEAVY))
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(tmp_path / "fake"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert sorted(p.name for p in marks.iterdir()) == []


def test_every_third_party_import_is_a_declared_dependency() -> None:
    """A fresh install (CI, a user's machine) has only what pyproject.toml declares."""
    import importlib.metadata
    import re
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    # and the PostgreSQL driver of the `postgres` extra (store/changes.py imports it only
    # on a PostgreSQL URL, as SQLAlchemy does), and the `gpu` extra's (imported only where
    # they are used: a GGUF file read, nf4 or int8 asked for)
    extras = project["optional-dependencies"]
    declared = {
        re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        for requirement in [*project["dependencies"], *extras["postgres"], *extras["gpu"]]
    }
    providers = importlib.metadata.packages_distributions()
    for path in sources():
        _, external = internal_imports(path)
        for module in sorted(external - set(sys.stdlib_module_names) - {"__future__"}):
            distributions = {d.lower().replace("_", "-") for d in providers.get(module, [])}
            assert distributions & declared, f"{path.name} imports {module}, not a dependency"
