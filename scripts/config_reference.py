"""docs/config.md: every configuration key of the project, with its type, default and meaning, read from
the typed schemas themselves (the dataclasses, their defaults and the comment beside or above each field).

    python -m scripts.config_reference           # rewrite docs/config.md
    python -m scripts.config_reference --check   # exit 1 when docs/config.md is not what the schemas say

tests/scripts/test_config_reference.py fails when the page is stale: change a schema, rerun this.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "config.md"
REQUIRED = object()  # a field without a default


@dataclass(frozen=True)
class Section:
    title: str
    schema: str  # "module:Class" of the root dataclass
    prefix: str  # how its keys are spelled where they are set ("agent." for AgentConfig)
    where: str  # how and where the keys are set (Markdown)
    skip: tuple[str, ...] = ()  # fields documented elsewhere


SECTIONS = (
    Section("PPO trainer", "verl.trainer.config:PPOConfig", "",
            "`python -m verl.trainer.main_ppo key=value ...` (`train_ppo.sh`, `train_ppo_mq.sh` and "
            "`configs/ppo_trainer.yaml` only override these); a recipe profile sets them under `rl:`."),
    Section("SFT trainer", "verl.trainer.fsdp_sft_trainer:SFTConfig", "",
            "`python -m verl.trainer.fsdp_sft_trainer key=value ...` (`configs/sft_trainer.yaml`); a recipe "
            "profile sets them under `sft:`."),
    Section("Search agent", "rag_r1.llm_agent.config:AgentConfig", "agent.",
            "The PPO trainer's free-form `agent` node, read by `rag_r1.llm_agent.loop:SearchAgentLoop`; the data "
            "builders and `python -m rag_r1.eval` take the same settings as flags; a recipe profile sets them "
            "under `agent:` (and `eval_agent:`). The agent's three length caps are the PPO trainer's "
            "`data.max_prompt_length`, `data.max_start_length` and `data.max_response_length`.",
            skip=("max_prompt_length", "max_start_length", "max_response_length")),
    Section("Retrieval client", "rag_r1.llm_agent.loop:RetrieverSettings", "retriever.",
            "The PPO trainer's free-form `retriever` node, read by the search agent's loop."),
    Section("Retrieval server", "rag_r1.search.config:ServerConfig", "",
            "`python start_retrieval.py --config server.yaml` (any of these keys) or the matching flags "
            "(`--encoder-backend` for `encoder_backend`); docs/retrieval.md."),
    Section("Recipe", "recipe.config:RecipeConfig", "recipe.",
            "`python -m recipe PROFILE [node.key=value ...]` (`make demo`, `make results`): a profile "
            "(`configs/recipe/*.yaml`) has the nodes `recipe:` (these keys), `agent:` and `eval_agent:` (the search "
            "agent's), `sft:` (the SFT trainer's) and `rl:` (the PPO trainer's); recipe/config.py says more."),
)


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: Any
    meaning: str


def load(schema: str) -> type:
    module, name = schema.split(":")
    __import__(module)
    return getattr(sys.modules[module], name)


def class_source(cls: type) -> tuple[ast.ClassDef, dict[int, str]]:
    """The class's syntax tree and its comments by line (line numbers of the dedented source)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string
    return ast.parse(source).body[0], comments


def comment_text(raw: str) -> str:
    """A comment without its `#` marks and type-checker notes."""
    raw = re.sub(r"#\s*type:\s*ignore(\[[^\]]*\])?", "", raw)
    return " ".join(part.strip() for part in raw.split("#") if part.strip())


def field_docs(cls: type) -> tuple[str | None, dict[str, tuple[str, str]]]:
    """(the class docstring, {field: (annotation as written, meaning)}); the meaning is the comment block
    right above the field joined with the comments on its own lines."""
    tree, comments = class_source(cls)
    lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    docs = {}
    for node in tree.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comment_text(comments[line]))
            line -= 1
        beside = [comment_text(comments[n]) for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        annotation = ast.get_source_segment("\n".join(lines), node.annotation) or ""
        docs[node.target.id] = (annotation, " ".join(t for t in above + beside if t))
    return ast.get_docstring(tree), docs


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return REQUIRED


def rows(cls: type, prefix: str, values: dict[str, Any] | None = None, skip: tuple[str, ...] = ()):
    """(node path, its docstring, its rows) for `cls` and every dataclass node under it, in schema order.
    `values` are the defaults an enclosing schema gives this node (they may differ from the class's)."""
    docstring, docs = field_docs(cls)
    own, nodes = [], []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        value = (values or {}).get(field.name, default_of(field))
        if dataclasses.is_dataclass(value):
            nested = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            nodes += rows(type(value), f"{prefix}{field.name}.", nested)
            continue
        annotation, meaning = docs.get(field.name, ("", ""))
        own.append(Row(f"{prefix}{field.name}", annotation, value, meaning))
    return [(prefix.rstrip("."), docstring, own)] + nodes


def shown(value: Any) -> str:
    """A default as a YAML file or a command line spells it."""
    if value is REQUIRED or value == "???":
        return "required"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if value is None:
        return "`null`"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, (list, tuple)):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def cell(text: str, prose: bool = False) -> str:
    """Text for a table cell: `|` would end the cell, and in prose `<search>` would be read as an HTML tag."""
    text = text.replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "\\<") if prose else text


def render_section(section: Section) -> str:
    cls = load(section.schema)
    module = cls.__module__.replace(".", "/") + ".py"
    parts = [f"## {section.title}", "", section.where, "",
             f"Schema: `{module}` (`{cls.__name__}`).", ""]
    for node, docstring, node_rows in rows(cls, section.prefix, skip=section.skip):
        if not node_rows:
            continue
        if node and node + "." != section.prefix:
            parts += [f"### `{node}`", ""]
        if docstring and node + "." != section.prefix:
            parts += [" ".join(docstring.split()), ""]
        parts += ["| key | type | default | meaning |", "|---|---|---|---|"]
        parts += [f"| `{r.key}` | `{cell(r.type)}` | {cell(shown(r.default))} | {cell(r.meaning, prose=True)} |" for r in node_rows]
        parts.append("")
    return "\n".join(parts)


def render() -> str:
    head = ["# Configuration reference", "",
            "Every key of the project's typed schemas: its type, its one default and what it means, as the schema "
            "says. Generated by `python -m scripts.config_reference` from the schemas (do not edit by hand; a "
            "test fails when this page is stale). \"required\" keys have no default.", "",
            "Contents: " + ", ".join(f"[{s.title}](#{s.title.lower().replace(' ', '-')})" for s in SECTIONS) + ".",
            ""]
    return "\n".join(head + [render_section(s) for s in SECTIONS]).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/config.md is stale, write nothing")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != page:
            raise SystemExit(f"{PAGE.relative_to(REPO)} is stale: run python -m scripts.config_reference")
        return
    PAGE.write_text(page, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
