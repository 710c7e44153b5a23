"""The pinned vLLM's API as data, read from its wheel's sources with `ast` (vLLM is never imported,
so this runs on any machine).

    python scripts/gpu/vllm_api.py                  # downloads vllm==<pin of requirements.txt> (no deps)
    python scripts/gpu/vllm_api.py --wheel PATH     # reads a wheel at hand instead
    python scripts/gpu/vllm_api.py --check          # exit 1 when the committed fixture differs

Writes tests/fixtures/vllm_api.json: the fields of EngineArgs, AsyncEngineArgs and SamplingParams
(with their defaults where these are literals, and the allowed values of Literal-typed ones), the
keys of TokensPrompt, the signatures of the LLM methods this project calls and of the AsyncLLM
methods an asynchronous rollout would call, the fields of the outputs, and those of the CUDA IPC
weight transfer's config and payloads. tests/fake_vllm.py builds the
tests' stand-in vLLM from it, so a keyword the pinned release does not take fails on a CPU as it
would on a GPU. Rerun it after changing the vllm pin, and commit the fixture.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "vllm_api.json"
REQUIREMENTS = ROOT / "requirements.txt"
WHEEL_CACHE = ROOT / ".cache" / "wheels"

LLM_METHODS = ("__init__", "generate", "sleep", "wake_up", "collective_rpc", "apply_model", "reset_prefix_cache")
# What an asynchronous rollout server would call: start, generate, sleep/wake, and the weight
# update protocol (pause, start, update, finish, resume).
ASYNC_LLM_METHODS = ("from_engine_args", "__init__", "generate", "abort", "sleep", "wake_up", "is_sleeping",
                     "collective_rpc", "reset_prefix_cache", "pause_generation", "resume_generation",
                     "init_weight_transfer_engine", "start_weight_update", "update_weights",
                     "finish_weight_update")

# class -> (its source in the wheel, what is read: "fields" of a dataclass or struct, "keys" of a
# TypedDict, or the named methods' signatures)
CLASSES: dict[str, tuple[str, str | tuple[str, ...]]] = {
    "LLM": ("vllm/entrypoints/llm.py", LLM_METHODS),
    "AsyncLLM": ("vllm/v1/engine/async_llm.py", ASYNC_LLM_METHODS),
    "EngineArgs": ("vllm/engine/arg_utils.py", "fields"),
    "SamplingParams": ("vllm/sampling_params.py", "fields"),
    "TokensPrompt": ("vllm/inputs/llm.py", "keys"),
    "RequestOutput": ("vllm/outputs.py", ("__init__",)),
    "CompletionOutput": ("vllm/outputs.py", "fields"),
    "Logprob": ("vllm/logprobs.py", "fields"),
    # what an asynchronous server is started with, and the CUDA IPC weight transfer it loads weights by
    "AsyncEngineArgs": ("vllm/engine/arg_utils.py", "fields"),
    "WeightTransferConfig": ("vllm/config/weight_transfer.py", "fields"),
    "WeightTransferInitRequest": ("vllm/distributed/weight_transfer/base.py", "fields"),
    "WeightTransferUpdateRequest": ("vllm/distributed/weight_transfer/base.py", "fields"),
    "IPCWeightTransferInitInfo": ("vllm/distributed/weight_transfer/ipc_engine.py", "fields"),
    "IPCWeightTransferUpdateInfo": ("vllm/distributed/weight_transfer/ipc_engine.py", "fields"),
}
# Packages whose public names re-export the classes above (`from vllm import LLM`).
EXPORTERS = ("vllm/__init__.py", "vllm/inputs/__init__.py")
# EngineArgs' defaults point into these (`dtype = ModelConfig.dtype`), and Literal aliases live there.
CONFIG_PREFIX = "vllm/config/"
TYPE_ALIAS = getattr(ast, "TypeAlias", ())  # `type Name = ...` statements, Python 3.12+


def module_name(path: str) -> str:
    """"vllm/inputs/__init__.py" -> "vllm.inputs"; "vllm/outputs.py" -> "vllm.outputs"."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Sources:
    """Parsed Python sources by path inside the package ("vllm/outputs.py"), with an index of their
    classes and of their module-level `Name = Literal[...]` aliases."""

    def __init__(self, files: dict[str, str]):
        self.trees = {path: ast.parse(text, filename=path) for path, text in files.items()}
        self.classes: dict[str, ast.ClassDef] = {}  # the first of a name, for references across modules
        self.home: dict[int, str] = {}  # id(class node) -> its path
        self.literal_aliases: dict[str, list] = {}
        conflicting: set[str] = set()
        for path, tree in self.trees.items():
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    self.classes.setdefault(node.name, node)
                    self.home[id(node)] = path
                name, values = _literal_alias(node)
                if name is None:
                    continue
                if self.literal_aliases.setdefault(name, values) != values:
                    conflicting.add(name)
        for name in conflicting:  # two modules mean different things by one name: trust neither
            del self.literal_aliases[name]

    def find_class(self, path: str, name: str) -> ast.ClassDef:
        for node in self.trees[path].body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return node
        raise LookupError(f"class {name} not found in {path}")

    def bases(self, cls: ast.ClassDef) -> list[ast.ClassDef]:
        """The class's bases that the sources define, looked up in its own module first."""
        found = []
        for base in cls.bases:
            if not isinstance(base, ast.Name):
                continue
            try:
                found.append(self.find_class(self.home[id(cls)], base.id))
            except LookupError:
                if base.id in self.classes:
                    found.append(self.classes[base.id])
        return found

    def choices(self, annotation: ast.expr | None) -> list | None:
        """The allowed values of a `Literal[...]` annotation (or an alias of one), else None."""
        if isinstance(annotation, ast.Name):
            return self.literal_aliases.get(annotation.id)
        return _literal_values(annotation)


def _literal_values(node: ast.expr | None) -> list | None:
    if not (isinstance(node, ast.Subscript) and _name_of(node.value) == "Literal"):
        return None
    elements = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    try:
        return [ast.literal_eval(e) for e in elements]
    except ValueError:
        return None


def _literal_alias(node: ast.stmt) -> tuple[str | None, list | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        target, value = node.targets[0].id, node.value
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        target, value = node.target.id, node.value
    elif isinstance(node, TYPE_ALIAS):  # `type Name = Literal[...]`
        target, value = node.name.id, node.value
    else:
        return None, None
    values = _literal_values(value)
    return (target, values) if values is not None else (None, None)


def _name_of(node: ast.expr) -> str | None:
    """"Literal" for both `Literal` and `typing.Literal`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


NOT_LITERAL = object()


def _json_literal(node: ast.expr) -> Any:
    """The node's value when it is a literal JSON can hold (tuples become lists), else NOT_LITERAL."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return NOT_LITERAL
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):  # sets, bytes, complex numbers, non-string keys
        return NOT_LITERAL


def _field_default(value: ast.expr | None, sources: Sources, seen: frozenset = frozenset()) -> tuple[bool, Any]:
    """(has a default, the default or NOT_LITERAL) of a class-body field whose value is `value`.

    Follows `field(default=...)`, pydantic's `Field(default, ...)` and references to another
    class's field (`ModelConfig.dtype`), the way EngineArgs borrows its config classes' defaults."""
    if value is None:
        return False, NOT_LITERAL
    if isinstance(value, ast.Call) and _name_of(value.func) in ("field", "Field"):
        keywords = {k.arg: k.value for k in value.keywords}
        if "default" in keywords:
            return _field_default(keywords["default"], sources, seen)
        if value.args:
            return _field_default(value.args[0], sources, seen)
        return ("default_factory" in keywords), NOT_LITERAL
    if (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
            and value.value.id in sources.classes and (value.value.id, value.attr) not in seen):
        owner = sources.classes[value.value.id]
        for node in owner.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == value.attr:
                _, default = _field_default(node.value, sources, seen | {(owner.name, value.attr)})
                return True, default
        return True, NOT_LITERAL
    return True, _json_literal(value)


def class_fields(cls: ast.ClassDef, sources: Sources) -> dict[str, dict]:
    """Public annotated fields of a dataclass / msgspec Struct, its bases' first: {name: {"required",
    "default"?, "choices"?}}. "default" is present only where it is a literal."""
    fields = {}
    for base in sources.bases(cls):
        fields.update(class_fields(base, sources))
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        if name.startswith("_") or _name_of(_subscript_base(node.annotation)) == "ClassVar":
            continue
        has_default, default = _field_default(node.value, sources)
        entry: dict[str, Any] = {"required": not has_default}
        if default is not NOT_LITERAL:
            entry["default"] = default
        choices = sources.choices(node.annotation)
        if choices is not None:
            entry["choices"] = choices
        fields[name] = entry
    return fields


def _subscript_base(annotation: ast.expr) -> ast.expr:
    return annotation.value if isinstance(annotation, ast.Subscript) else annotation


def typed_dict_keys(cls: ast.ClassDef, sources: Sources) -> dict[str, dict]:
    """Keys of a TypedDict, its bases' included: {key: {"required": bool}}."""
    keys: dict[str, dict] = {}
    for base in sources.bases(cls):
        keys.update(typed_dict_keys(base, sources))
    total = next((k.value.value for k in cls.keywords if k.arg == "total"), True)
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            marker = _name_of(_subscript_base(node.annotation))
            required = True if marker == "Required" else False if marker == "NotRequired" else total
            keys[node.target.id] = {"required": required}
    return keys


def signature(fn: ast.FunctionDef | ast.AsyncFunctionDef, sources: Sources) -> dict:
    """{"async", "generator", "binding" (method | classmethod | staticmethod), "parameters": [{"name",
    "kind", "has_default", "default"?, "choices"?}]} with `inspect.Parameter` kind names; "default" is
    present where it is a literal. "generator": the body yields (an `async def` that yields is an
    async generator: calling it starts nothing, iterating it does)."""
    args = fn.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = []

    def add(arg: ast.arg, kind: str, default: ast.expr | None) -> None:
        entry: dict[str, Any] = {"name": arg.arg, "kind": kind, "has_default": default is not None}
        value = NOT_LITERAL if default is None else _json_literal(default)
        if value is not NOT_LITERAL:
            entry["default"] = value
        choices = sources.choices(arg.annotation)
        if choices is not None:
            entry["choices"] = choices
        params.append(entry)

    for i, (arg, default) in enumerate(zip(positional, defaults)):
        add(arg, "POSITIONAL_ONLY" if i < len(args.posonlyargs) else "POSITIONAL_OR_KEYWORD", default)
    if args.vararg:
        add(args.vararg, "VAR_POSITIONAL", None)
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        add(arg, "KEYWORD_ONLY", default)
    if args.kwarg:
        add(args.kwarg, "VAR_KEYWORD", None)
    decorators = {_name_of(d) for d in fn.decorator_list}
    binding = next((b for b in ("classmethod", "staticmethod") if b in decorators), "method")
    return {"async": isinstance(fn, ast.AsyncFunctionDef), "generator": _yields(fn), "binding": binding,
            "parameters": params}


def _yields(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether `fn`'s own body (not a function nested in it) yields."""
    pending = list(fn.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            pending.extend(ast.iter_child_nodes(node))
    return False


def find_method(cls: ast.ClassDef, name: str, sources: Sources) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The method's implementation (the last definition not marked @overload), searching the class,
    then its bases among the parsed sources."""
    found = None
    for node in cls.body:
        if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name
                and "overload" not in {_name_of(d) for d in node.decorator_list}):
            found = node
    if found is not None:
        return found
    for base in sources.bases(cls):
        found = find_method(base, name, sources)
        if found is not None:
            return found
    return None


def public_names(tree: ast.Module) -> set[str]:
    """Names a package exports: its `__all__` and the keys of a lazy-import table (`MODULE_ATTRS`)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "__all__" and isinstance(node.value, (ast.List, ast.Tuple)):
                names.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
            elif node.targets[0].id == "MODULE_ATTRS" and isinstance(node.value, ast.Dict):
                names.update(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return names


def describe_class(name: str, path: str, what: str | tuple[str, ...], sources: Sources,
                   exporters: dict[str, set[str]]) -> dict:
    cls = sources.find_class(path, name)
    entry: dict[str, Any] = {"module": module_name(path),
                             "exported_by": sorted(m for m, names in exporters.items() if name in names)}
    if what == "fields":
        entry["fields"] = class_fields(cls, sources)
    elif what == "keys":
        entry["keys"] = typed_dict_keys(cls, sources)
    else:
        methods = {}
        for method in what:
            fn = find_method(cls, method, sources)
            if fn is not None:  # absent from this release: the fake then lacks it too
                methods[method] = signature(fn, sources)
        entry["methods"] = methods
    return entry


def extract(read: Callable[[str], str], paths: Iterable[str]) -> dict:
    """The fixture's "classes" from the package sources: `read(path)` gives a file's text, `paths` all
    the file paths there are (to find the config modules)."""
    wanted = {path for path, _ in CLASSES.values()} | set(EXPORTERS)
    wanted |= {p for p in paths if p.startswith(CONFIG_PREFIX) and p.endswith(".py")}
    sources = Sources({path: read(path) for path in sorted(wanted)})
    exporters = {module_name(path): public_names(sources.trees[path]) for path in EXPORTERS}
    return {name: describe_class(name, path, what, sources, exporters) for name, (path, what) in CLASSES.items()}


def wheel_api(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if re.fullmatch(r"vllm-[^/]+\.dist-info/METADATA", n))
        version = re.search(r"^Version: (\S+)$", archive.read(metadata).decode(), re.MULTILINE).group(1)
        classes = extract(lambda path: archive.read(path).decode(), names)
    return {"vllm": version, "wheel": wheel.name, "classes": classes}


def pinned_version(requirements: Path = REQUIREMENTS) -> str:
    match = re.search(r"^vllm==([^\s#;]+)", requirements.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"{requirements} pins no vllm==<version>")
    return match.group(1)


def cached_wheel(version: str, cache: Path = WHEEL_CACHE) -> Path | None:
    return next(iter(sorted(cache.glob(f"vllm-{version}-*.whl"))), None)


def download_wheel(version: str, cache: Path = WHEEL_CACHE) -> Path:
    """The vllm wheel of this version from the package index, without its dependencies (cached)."""
    wheel = cached_wheel(version, cache)
    if wheel is None:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        f"vllm=={version}", "--dest", str(cache)], check=True)
        wheel = cached_wheel(version, cache)
        if wheel is None:
            raise SystemExit(f"pip download left no vllm-{version}-*.whl in {cache}")
    return wheel


def _contains_dict(value: Any) -> bool:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(isinstance(c, dict) or _contains_dict(c) for c in children)


def to_json(value: Any, indent: str = "") -> str:
    """JSON with one line per field or parameter (whatever holds no dict), so that the diff of a new
    release reads field by field."""
    if not _contains_dict(value):
        return json.dumps(value)
    inner = indent + " "
    if isinstance(value, list):
        lines = [inner + to_json(v, inner) for v in value]
        return "[\n" + ",\n".join(lines) + "\n" + indent + "]"
    lines = [f"{inner}{json.dumps(k)}: {to_json(v, inner)}" for k, v in value.items()]
    return "{\n" + ",\n".join(lines) + "\n" + indent + "}"


def write_fixture(api: dict, path: Path = FIXTURE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(api) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help="a vllm wheel (default: vllm==<pin> from the index, cached)")
    parser.add_argument("--check", action="store_true", help="compare with the committed fixture instead of writing it")
    args = parser.parse_args()
    api = wheel_api(args.wheel or download_wheel(pinned_version()))
    if args.check:
        committed = json.loads(FIXTURE.read_text())
        if committed != api:
            changed = sorted(name for name in set(api["classes"]) | set(committed["classes"])
                             if api["classes"].get(name) != committed["classes"].get(name))
            print(f"{FIXTURE.relative_to(ROOT)} differs from {api['wheel']}: vllm {committed['vllm']} -> "
                  f"{api['vllm']}; classes {changed}. Rerun without --check and commit it.")
            raise SystemExit(1)
        print(f"{FIXTURE.relative_to(ROOT)} matches {api['wheel']}")
        return
    write_fixture(api)
    print(f"wrote {FIXTURE.relative_to(ROOT)} ({FIXTURE.stat().st_size} bytes) from {api['wheel']}")


if __name__ == "__main__":
    main()
