"""The package's imports run one way (docs/architecture.md): no module imports one that imports it back, directly or
around a circle, and no layer imports a layer above it. Imports inside functions count; `TYPE_CHECKING` ones too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "avbert"

# Bottom to top: a module may import modules of its own layer or below, never above.
LAYERS = (
    {"cli", "configuration_avbert", "model_card", "weights_checksum", "_import_hooks"},
    {"media_decoding"},
    {"clip_sampling"},
    {"feature_extraction_avbert"},
    {"video_processing_avbert"},
    {"processing_avbert"},
    {"modeling_avbert"},
    {"parameter_counts", "convert_original_checkpoint"},
    {"data"},
    {"training"},
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The avbert modules `path` imports anywhere in it (`from . import x` resolved to the module `x` if it is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules] or [base]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def layer_of(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else ""
    for index, layer in enumerate(LAYERS):
        if key in layer:
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add it where it belongs")


GRAPH = import_graph()


def test_no_module_imports_one_that_imports_it_back():
    # Depth-first search for a back edge: any cycle, however long.
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for other in sorted(GRAPH[module]):
            if state.get(other) == "open":
                cycle = [*path[path.index(other) :], other]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if other not in state:
                visit(other)
        path.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(name for name in GRAPH if name != "avbert"))
def test_no_module_imports_a_layer_above_it(module):
    upward = sorted(other for other in GRAPH[module] if other != "avbert" and layer_of(other) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports {upward} from a layer above it"


def test_the_graph_is_read():
    # Guards the test itself: known imports are found, function-level ones included.
    assert "avbert.data.shards" in GRAPH["avbert.training.train"]  # inside run()
    assert "avbert.video_processing_avbert" in GRAPH["avbert.processing_avbert"]
    assert "avbert.media_decoding" in GRAPH["avbert.feature_extraction_avbert"]
