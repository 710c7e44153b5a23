"""What the policy asked for in one turn: `parse_action`, `first_block`, `blocks` and `split_queries`.

    >>> parse_action("<think> need the capital </think>\\n<search> capital of France </search>")
    ('search', 'capital of France')
    >>> first_block("<tool_call> {} </tool_call> <answer> x </answer>", ("tool_call", "answer"))
    ('tool_call', '{}')
    >>> blocks("<tool_call> a </tool_call> <tool_call> b </tool_call> <tool_call> c", "tool_call")
    (['a', 'b'], True)
    >>> split_queries(" a , , b ,c, d ", max_queries=3)
    ['a', 'b', 'c']
"""
from __future__ import annotations

import re
from functools import lru_cache

from rag_r1.llm_agent.config import AgentConfig

# Only a CLOSED think block is removed before parsing. Generation stops at the first </search> or
# </answer>, so an action written inside a still-open <think> is what the policy asked for; tags
# inside a closed block are the policy musing about tags, after which it went on writing.
_CLOSED_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def parse_action(text: str) -> tuple[str | None, str]:
    """`(action, content)` of the first complete `<search>`/`<answer>` block, or `(None, "")`."""
    return first_block(text, ("search", "answer"))


@lru_cache(maxsize=8)
def _closing(tags: tuple[str, ...]) -> re.Pattern:
    return re.compile("</(" + "|".join(map(re.escape, tags)) + ")>")


def first_block(text: str, tags: tuple[str, ...]) -> tuple[str | None, str]:
    """`(tag, content)` of the first complete block of one of `tags`, or `(None, "")`.

    "First complete" is the block whose closing tag comes first; its content starts after the
    last matching opening tag before that closing tag (so `<search> <search> q </search>` is
    `("search", "q")`). A closing tag without an opening one is skipped. Content is stripped.
    """
    text = _CLOSED_THINK.sub(" ", text)
    for close in _closing(tags).finditer(text):
        tag = close.group(1)
        start = text.rfind(f"<{tag}>", 0, close.start())
        if start != -1:
            return tag, text[start + len(tag) + 2 : close.start()].strip()
    return None, ""


def blocks(text: str, tag: str) -> tuple[list[str], bool]:
    """The stripped contents of every complete `<tag>...</tag>` block, in order, and whether a `<tag>`
    opened after the last of them is left unclosed (generation stopped inside it)."""
    text = _CLOSED_THINK.sub(" ", text)
    opening, closing = f"<{tag}>", f"</{tag}>"
    contents, position = [], 0
    while (start := text.find(opening, position)) != -1:
        end = text.find(closing, start)
        if end == -1:
            return contents, True
        contents.append(text[start + len(opening):end].strip())
        position = end + len(closing)
    return contents, False


def split_queries(content: str, delimiter: str = AgentConfig.query_delimiter,
                  max_queries: int = AgentConfig.max_queries) -> list[str]:
    """Queries of a multi-query `<search>`: split on `delimiter`, stripped, empties dropped, the
    first `max_queries` kept."""
    queries = [q.strip() for q in content.split(delimiter)]
    return [q for q in queries if q][:max_queries]
