"""The package's layout (the layers in LAYERS below): imports point one way, from higher layers to lower ones, with no cycle; the
converters load lazily."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hf_dalle


PACKAGE_DIR = Path(hf_dalle.__file__).parent

# The layers, lowest first, each a few groups of modules (names under `hf_dalle.`, a package standing for all its
# modules). A module imports from its own group and from lower layers; the groups of one layer do not import each
# other except for the pairs in SIDEWAYS, and no module imports the package's `__init__`.
LAYERS = [
    {
        "utilities": [
            "io_utils",
            "image_utils",
            "hub_utils",
            "loading_utils",
            "device_utils",
            "import_utils",
            "data",
            "version",
        ]
    },
    {"models": ["models", "tokenization_dalle", "tokenization_dalle_bart", "memory"]},
    {"pipelines": ["pipelines"], "lora": ["lora"]},
    {"training": ["training"], "conversion": ["conversion"], "testing": ["testing_utils"]},
    {"demo": ["demo"]},
    {"app": ["app"], "cli": ["cli"]},
]
SIDEWAYS = {
    ("pipelines", "lora"): "DallePipeline.load_lora_weights loads adapters",
    ("cli", "app"): "`hf-dalle serve` runs the web app (lazily: Gradio is an extra)",
}


def module_name(path: Path) -> str:
    parts = ["hf_dalle", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports (at the top or inside functions)."""
    paths = {module_name(p): p for p in PACKAGE_DIR.rglob("*.py") if "demo_model" not in p.parts}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([node.module] if node.module else []))
                # `from package import module` imports the module; `from module import name` the module.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            for target in targets:
                while target not in paths and "." in target:
                    target = target.rpartition(".")[0]
                if target in paths and target != name:
                    imported.add(target)
        graph[name] = imported
    return graph


def place(module: str) -> tuple[int, str]:
    """(layer, group) of a module; the package's `__init__` is above everything."""
    if module == "hf_dalle":
        return len(LAYERS), "package"
    for layer, groups in enumerate(LAYERS):
        for group, prefixes in groups.items():
            if any(module == f"hf_dalle.{p}" or module.startswith(f"hf_dalle.{p}.") for p in prefixes):
                return layer, group
    raise AssertionError(f"{module} is in no layer of tests/test_package_layout.py: place it in LAYERS.")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_imports_point_one_way_and_never_in_a_circle():
    graph = import_graph()
    assert {"hf_dalle.io_utils", "hf_dalle.conversion.checkpoints", "hf_dalle.training.loop"} <= set(graph)
    assert "hf_dalle.io_utils" in graph["hf_dalle.lora"]  # the graph sees the imports (and `from . import x` ones)
    wrong = []
    for module, imported in sorted(graph.items()):
        (layer, group) = place(module)
        for target in sorted(imported):
            (target_layer, target_group) = place(target)
            upward = target_layer > layer
            sideways = target_layer == layer and target_group != group and (group, target_group) not in SIDEWAYS
            if upward or sideways:
                wrong.append(f"{module} ({group}) imports {target} ({target_group})")
    assert not wrong, "imports against the layers of LAYERS:\n" + "\n".join(wrong)
    assert cycles(graph) == []


def test_the_graph_checks_find_what_they_look_for():
    # A cycle and an upward import, as the package had them before (app <-> cli, lora -> training).
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert place("hf_dalle.lora")[0] < place("hf_dalle.training.outputs")[0]
    assert place("hf_dalle.conversion.convert_rudalle")[1] != place("hf_dalle.training.loop")[1]


def test_import_hf_dalle_leaves_the_converters_unimported():
    code = """
import json, sys
import hf_dalle
loaded = sorted(m for m in sys.modules if m.startswith("hf_dalle.conversion"))
functions = {name: getattr(hf_dalle, name).__module__ for name in (
    "convert_openai_dvae", "convert_rudalle", "convert_sber_vqgan", "convert_ruclip", "convert_yttm_to_tokenizer")}
from hf_dalle import convert_rudalle
print(json.dumps({"loaded": loaded, "functions": functions, "callable": callable(convert_rudalle)}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["functions"] == {
        "convert_openai_dvae": "hf_dalle.conversion.convert_openai_dvae",
        "convert_rudalle": "hf_dalle.conversion.convert_rudalle",
        "convert_sber_vqgan": "hf_dalle.conversion.convert_rudalle_vqgan",
        "convert_ruclip": "hf_dalle.conversion.convert_ruclip",
        "convert_yttm_to_tokenizer": "hf_dalle.conversion.convert_yttm",
    }
    assert report["callable"]


def test_unknown_package_attributes_still_raise():
    with pytest.raises(AttributeError, match="has no attribute 'convert_nothing'"):
        hf_dalle.convert_nothing  # noqa: B018
    assert "convert_rudalle" in dir(hf_dalle)
