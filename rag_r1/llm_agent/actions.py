"""What the policy asked for in one turn: `parse_action` and `split_queries`.

    >>> parse_action("<think> need the capital </think>\\n<search> capital of France </search>")
    ('search', 'capital of France')
    >>> split_queries(" a , , b ,c, d ", max_queries=3)
    ['a', 'b', 'c']
"""
from __future__ import annotations

import re

from rag_r1.llm_agent.config import AgentConfig

# Only a CLOSED think block is removed before parsing. Generation stops at the first </search> or
# </answer>, so an action written inside a still-open <think> is what the policy asked for; tags
# inside a closed block are the policy musing about tags, after which it went on writing.
_CLOSED_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_CLOSE = re.compile(r"</(search|answer)>")


def parse_action(text: str) -> tuple[str | None, str]:
    """`(action, content)` of the first complete `<search>`/`<answer>` block, or `(None, "")`.

    "First complete" is the block whose closing tag comes first; its content starts after the
    last matching opening tag before that closing tag (so `<search> <search> q </search>` is
    `("search", "q")`). A closing tag without an opening one is skipped. Content is stripped.
    """
    text = _CLOSED_THINK.sub(" ", text)
    for close in _CLOSE.finditer(text):
        tag = close.group(1)
        start = text.rfind(f"<{tag}>", 0, close.start())
        if start != -1:
            return tag, text[start + len(tag) + 2 : close.start()].strip()
    return None, ""


def split_queries(content: str, delimiter: str = AgentConfig.query_delimiter,
                  max_queries: int = AgentConfig.max_queries) -> list[str]:
    """Queries of a multi-query `<search>`: split on `delimiter`, stripped, empties dropped, the
    first `max_queries` kept."""
    queries = [q.strip() for q in content.split(delimiter)]
    return [q for q in queries if q][:max_queries]
