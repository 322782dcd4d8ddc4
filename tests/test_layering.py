"""Dependency direction: methods/ is pure (no dagster, no resources, no model libraries at import),
resources/ imports no asset module, and asset modules do not import from each other."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted(p for p in (ROOT / "curation_assets" / "methods").glob("*.py") if p.name != "__init__.py")
ASSET_MODULES = {"raw_pool", "open_tags", "normalized_tags", "knowledge_tree", "instance_scores", "selected_subset", "subset_training", "query_set", "warmup_adapter", "gradient_store"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_methods_import_neither_dagster_nor_resources():
    for path in METHODS:
        bad = {m for m in imported_modules(path) if m.split(".")[0] in ("dagster", "resources") or m.startswith("dagster_")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_resources_import_no_asset_module():
    for path in sorted((ROOT / "resources").glob("*.py")):
        bad = {m for m in imported_modules(path) if m.startswith("curation_assets.") and not m.startswith("curation_assets.methods")}
        assert not bad, f"resources/{path.name} imports {sorted(bad)}"


def test_asset_modules_do_not_import_each_other():
    for name in sorted(ASSET_MODULES):
        imported = imported_modules(ROOT / "curation_assets" / f"{name}.py")
        bad = {m for m in imported for other in ASSET_MODULES - {name} if m == f"curation_assets.{other}" or m.startswith(f"curation_assets.{other}.")}
        assert not bad, f"{name}.py imports {sorted(bad)}"


def test_importing_every_method_module_loads_no_dagster_or_model_library():
    """In a fresh interpreter, import each methods module in turn; after each, dagster, resources,
    transformers and peft must still be absent from sys.modules."""
    modules = [f"curation_assets.methods.{p.stem}" for p in METHODS]
    code = (
        "import importlib, json, sys\n"
        "banned = ('dagster', 'resources', 'transformers', 'peft')\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    importlib.import_module(name)\n"
        "    loaded = sorted({m.split('.')[0] for m in sys.modules} & set(banned))\n"
        "    if loaded:\n"
        "        print(json.dumps([name, loaded])); sys.exit(1)\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code, json.dumps(modules)], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr[-2000:]


def test_every_method_and_asset_module_has_its_test_module():
    """Tests mirror the layout: tests/test_<module>.py for each methods/ module and each module
    that defines Dagster assets (found by its decorators, so a new asset module needs its tests)."""
    defines_assets = {p.stem for p in (ROOT / "curation_assets").glob("*.py") if any(d in p.read_text() for d in ("@dg.asset", "@dg.multi_asset"))}
    assert ASSET_MODULES <= defines_assets
    missing = [f"tests/test_{name}.py" for name in sorted({p.stem for p in METHODS} | defines_assets) if not (ROOT / "tests" / f"test_{name}.py").exists()]
    assert not missing, f"modules without their test module: {missing}"
