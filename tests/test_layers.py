"""Imports go one way: errors <- TLS <- core <- HTTP, SMTP, FTP <- manager <- package <- CLI.

A module may import its own layer and the layers below it, never one above; HTTP, SMTP and
FTP never import each other; a sans-I/O ``*_protocol.py`` imports only the errors and the
standard library; ``aiohttp`` is imported only by the HTTP modules (and by the CLI, a user of
the package like any other: the HTTP API takes aiohttp's ``ClientTimeout``). Above the core, no
module reaches into a core module's private attributes: the core offers named methods.

The imports are read from the source with `ast`, the ones inside functions and under
``TYPE_CHECKING`` included: a type hint that points up a layer is a cycle a reader has to see
through. A new module must be given its layer here before it can exist.
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "asyncsp"

ERRORS, TLS, CORE, PROTOCOLS, MANAGER, PACKAGE_INIT, CLI = range(7)
LAYER_NAMES = ("errors", "TLS", "core", "protocols", "manager", "package", "CLI")

LAYERS: dict[str, tuple[int, str | None]] = {
    # pattern: (layer, the protocol it belongs to; protocols never import each other)
    "_errors": (ERRORS, None),
    "_protocols": (TLS, None),
    "_policy": (TLS, None),
    "_tls": (TLS, None),
    "_contexts": (TLS, None),
    "_sessions": (TLS, None),
    "_system": (TLS, None),
    "_translate": (TLS, None),  # ssl and OSError errors become ours, chained
    "_endpoint": (CORE, None),
    "_sockets": (CORE, None),
    "_resolve": (CORE, None),
    "_proxy": (CORE, None),
    "_defaults": (CORE, None),
    "_stream_buffer": (CORE, None),
    "_streams": (CORE, None),
    "_pool": (CORE, None),
    "_dialer": (CORE, None),
    "_servicepoint": (CORE, None),
    "_registry": (CORE, None),
    "_events": (CORE, None),
    "_credentials": (CORE, None),
    "_session_args": (CORE, None),
    "_http": (PROTOCOLS, "http"),
    "_http_*": (PROTOCOLS, "http"),
    "_smtp": (PROTOCOLS, "smtp"),
    "_smtp_connection": (PROTOCOLS, "smtp"),
    "_smtp_protocol": (PROTOCOLS, "smtp"),
    "_ftp": (PROTOCOLS, "ftp"),
    "_ftp_*": (PROTOCOLS, "ftp"),
    "_manager": (MANAGER, None),
    "__init__": (PACKAGE_INIT, None),
    "__main__": (CLI, None),
    "_cli": (CLI, None),
    "_probe": (CLI, None),
    "_probe_*": (CLI, None),
    "_demo": (CLI, None),
    "_demo_servers": (CLI, None),
    "_output": (CLI, None),
    "_policyinfo": (CLI, None),
    "_certinfo": (CLI, None),
    "_smtpcheck": (CLI, None),
    "_dialogues": (CLI, None),
}

PRIVATE_NAMES_ALLOWED: set[tuple[str, str, str]] = set()


def layer_of(module: str) -> tuple[int, str | None]:
    if module in LAYERS:
        return LAYERS[module]
    for pattern, layer in LAYERS.items():
        if fnmatch.fnmatchcase(module, pattern):
            return layer
    raise KeyError(module)


def modules() -> dict[str, ast.Module]:
    return {
        path.stem: ast.parse(path.read_text(encoding="utf-8"), str(path))
        for path in sorted(PACKAGE.glob("*.py"))
    }


def imports(tree: ast.Module) -> list[tuple[str, int, list[str]]]:
    """(module, line, names) of every import: ``asyncsp`` modules by their stem (``_tls``),
    the rest by their top-level name (``aiohttp``)."""
    found: list[tuple[str, int, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                found.append(("__init__" if top == "asyncsp" else top, node.lineno, []))
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level == 0:
                top = (node.module or "").split(".")[0]
                found.append(("__init__" if top == "asyncsp" else top, node.lineno, names))
            elif node.module is None:  # from . import _probe, __version__
                for name in names:
                    found.append((name if name.startswith("_") else "__init__", node.lineno, []))
            else:
                found.append((node.module.split(".")[0], node.lineno, names))
    return found


def own_modules(names: list[tuple[str, int, list[str]]], all_modules: set[str]) -> list:
    return [entry for entry in names if entry[0] in all_modules]


def test_every_module_has_a_layer() -> None:
    unknown = []
    for module in modules():
        try:
            layer_of(module)
        except KeyError:
            unknown.append(module)
    assert not unknown, f"give these modules a layer in tests/test_layers.py: {unknown}"


def wrong_imports(module: str, tree: ast.Module, known: set[str]) -> list[str]:
    """What is wrong with *module*'s imports of the package's *known* modules."""
    layer, protocol = layer_of(module)
    wrong = []
    for target, line, _ in own_modules(imports(tree), known):
        target_layer, target_protocol = layer_of(target)
        if target_layer > layer:
            wrong.append(
                f"asyncsp/{module}.py:{line}: {LAYER_NAMES[layer]} imports "
                f"{target} ({LAYER_NAMES[target_layer]}), a layer above it"
            )
        elif layer == PROTOCOLS and target_layer == PROTOCOLS and target_protocol != protocol:
            wrong.append(
                f"asyncsp/{module}.py:{line}: {protocol} imports {target} ({target_protocol}); "
                "protocols never import each other"
            )
    return wrong


def test_imports_go_one_way() -> None:
    trees = modules()
    wrong = [
        line for module, tree in trees.items() for line in wrong_imports(module, tree, set(trees))
    ]
    assert not wrong, "\n".join(wrong)


def test_protocol_cores_import_only_the_errors_and_the_standard_library() -> None:
    wrong = []
    for module, tree in modules().items():
        if not module.endswith("_protocol"):
            continue
        for target, line, _ in imports(tree):
            if target not in {"_errors", "__future__"} and target not in sys.stdlib_module_names:
                wrong.append(f"asyncsp/{module}.py:{line}: imports {target}")
    assert not wrong, "\n".join(wrong)


def test_aiohttp_is_imported_by_the_http_modules_only() -> None:
    wrong = []
    for module, tree in modules().items():
        layer, protocol = layer_of(module)
        if protocol == "http" or layer == CLI:
            continue
        for target, line, _ in imports(tree):
            if target in {"aiohttp", "yarl", "multidict"}:
                wrong.append(f"asyncsp/{module}.py:{line}: imports {target}")
    assert not wrong, "\n".join(wrong)


def test_private_names_are_not_imported_across_layers() -> None:
    trees = modules()
    wrong = []
    for module, tree in trees.items():
        for target, line, names in own_modules(imports(tree), set(trees)):
            if layer_of(target) == layer_of(module):
                continue
            for name in names:
                if name.startswith("_") and (module, target, name) not in PRIVATE_NAMES_ALLOWED:
                    wrong.append(f"asyncsp/{module}.py:{line}: imports {target}.{name}")
    assert not wrong, "\n".join(wrong)


def private_attributes(tree: ast.Module) -> set[str]:
    """The private names a module's classes define: methods, class attributes, ``self._x``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    names.update(t.id for t in item.targets if isinstance(t, ast.Name))
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            names.add(node.attr)
    return {name for name in names if name.startswith("_") and not name.endswith("__")}


def test_no_module_reaches_into_core_private_state() -> None:
    """A core module's private state is its own: neither a layer above nor another core
    module reaches into it (each uses the named methods the core gives)."""
    trees = modules()
    core_private = set()
    for module, tree in trees.items():
        if layer_of(module)[0] == CORE:
            core_private |= private_attributes(tree)
    wrong = []
    for module, tree in trees.items():
        if layer_of(module)[0] < CORE:
            continue
        own = private_attributes(tree)  # a name its own classes define is its own business
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in core_private
                and node.attr not in own
                and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})
            ):
                wrong.append(f"asyncsp/{module}.py:{node.lineno}: .{node.attr}")
    assert not wrong, "reaches into the core's private state:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("_servicepoint", "from ._manager import ConnectionManager", "a layer above it"),
        ("_smtp", "from ._ftp import FtpClient", "protocols never import each other"),
        ("_errors", "if TYPE_CHECKING:\n    from ._tls import TlsInfo", "a layer above it"),
        ("_registry", "def f():\n    from . import _http", "a layer above it"),
    ],
)
def test_the_rule_catches_a_back_import(module: str, source: str, complaint: str) -> None:
    """The checker itself: a back-import, in a function or a type hint too, is found."""
    (found,) = wrong_imports(module, ast.parse(source), set(modules()))
    assert found.endswith(complaint)
