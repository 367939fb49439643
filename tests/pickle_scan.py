"""A source scanner for every way Python code can unpickle (run code while loading).

`unsafe_loads(source)` parses one file and follows its import aliases (`import torch
as t`, `from torch import load`, `from torch.serialization import load as l`,
`t = torch`, `loader = torch.load`), so each use of a loader is judged by its real
name wherever it appears, called or passed around. What it reports:
  * importing a pickle-family module at all (pickle, cloudpickle, dill, joblib, ...);
  * torch.load / torch.serialization.load unless called with weights_only=True;
  * numpy.load with allow_pickle anything but False;
  * loaders that always unpickle (mlflow.pytorch.load_model, pandas.read_pickle, ...);
  * yaml loaders that build arbitrary objects, eval/exec, and dynamic imports
    (__import__, importlib.import_module), which would hide all of the above.
Used by tests/test_security.py, with unit tests on small snippets of each form."""
from __future__ import annotations

import ast

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve",
                  "marshal", "copyreg", "pickletools"}
# name -> (keyword, the one constant value that makes the call safe, safe when absent)
GUARDED = {
    "torch.load": ("weights_only", True, False),
    "torch.serialization.load": ("weights_only", True, False),
    "numpy.load": ("allow_pickle", False, True),
}
ALWAYS_UNSAFE = {
    "mlflow.pytorch.load_model", "mlflow.pytorch.log_model", "mlflow.pytorch.save_model",
    "mlflow.sklearn.load_model", "pandas.read_pickle", "numpy.lib.format.read_array",
    "torch.serialization._load", "yaml.load", "yaml.load_all", "yaml.unsafe_load",
    "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all", "yaml.Loader",
    "yaml.UnsafeLoader", "yaml.FullLoader", "eval", "exec", "__import__",
    "importlib.import_module", "importlib.__import__",
}
# The short names modules are usually imported under.
CANONICAL = {"np": "numpy", "pd": "pandas"}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class _Scanner(ast.NodeVisitor):
    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.findings: list[str] = []
        self.parents: dict[ast.AST, ast.AST] = {}

    def resolve(self, node: ast.AST) -> str | None:
        name = _dotted(node)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        head = self.aliases.get(head, CANONICAL.get(head, head))
        return f"{head}.{rest}" if rest else head

    def report(self, node: ast.AST, what: str) -> None:
        self.findings.append(f"line {getattr(node, 'lineno', '?')}: {what}")

    # -- imports and aliases -----------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in PICKLE_MODULES:
                self.report(node, f"imports {alias.name}")
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                root = alias.name.split(".")[0]
                self.aliases[root] = root

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.split(".")[0] in PICKLE_MODULES:
            self.report(node, f"imports from {module}")
        for alias in node.names:
            full = f"{CANONICAL.get(module, module)}.{alias.name}" if module else alias.name
            if alias.name in PICKLE_MODULES:
                self.report(node, f"imports {full}")
            self.aliases[alias.asname or alias.name] = full

    def visit_Assign(self, node: ast.Assign) -> None:
        # t = torch / loader = torch.load: the new name stands for the old one
        target = self.resolve(node.value) if isinstance(node.value, (ast.Name,
                                                                     ast.Attribute)) else None
        if target is not None:
            for tgt in node.targets:
                if isinstance(tgt, ast.Name):
                    self.aliases[tgt.id] = target
        self.generic_visit(node)

    # -- uses ----------------------------------------------------------------------------
    def check_reference(self, node: ast.AST) -> None:
        name = self.resolve(node)
        if name is None:
            return
        root = name.split(".")[0]
        if root in PICKLE_MODULES:
            self.report(node, f"uses {name}")
            return
        if name in ALWAYS_UNSAFE:
            self.report(node, f"uses {name}")
            return
        if name not in GUARDED:
            return
        keyword, safe_value, safe_when_absent = GUARDED[name]
        call = self.parents.get(node)
        if not (isinstance(call, ast.Call) and call.func is node):
            self.report(node, f"passes {name} around (cannot check {keyword}=)")
            return
        if any(kw.arg is None for kw in call.keywords):
            self.report(node, f"{name}(**kwargs) (cannot check {keyword}=)")
            return
        value = next((kw.value for kw in call.keywords if kw.arg == keyword), None)
        if value is None:
            if not safe_when_absent:
                self.report(node, f"{name} without {keyword}={safe_value}")
        elif not (isinstance(value, ast.Constant) and value.value is safe_value):
            self.report(node, f"{name} with {keyword}={ast.unparse(value)}")

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.check_reference(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        # judge the longest dotted name only (torch.serialization.load, not torch.serialization)
        parent = self.parents.get(node)
        if not (isinstance(parent, ast.Attribute) and parent.value is node):
            self.check_reference(node)
            if self.resolve(node) is not None:
                return
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        # getattr(torch, "load"): a loader by a string name
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2:
            obj, attr = self.resolve(node.args[0]), node.args[1]
            if obj and isinstance(attr, ast.Constant) and isinstance(attr.value, str):
                name = f"{obj}.{attr.value}"
                if (name in GUARDED or name in ALWAYS_UNSAFE
                        or name.split(".")[0] in PICKLE_MODULES):
                    self.report(node, f"getattr to {name}")
        self.generic_visit(node)


def unsafe_loads(source: str) -> list[str]:
    """Every unsafe load (or way to hide one) in Python `source`, as 'line N: what'."""
    tree = ast.parse(source)
    scanner = _Scanner()
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            scanner.parents[child] = parent
    # aliases first (an import at the bottom still names what the top calls)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if isinstance(node, ast.Import):
                    scanner.aliases[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0])
                elif node.module:
                    scanner.aliases[alias.asname or alias.name] = (
                        f"{CANONICAL.get(node.module, node.module)}.{alias.name}")
    scanner.visit(tree)
    return scanner.findings
