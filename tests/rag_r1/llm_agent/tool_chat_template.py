"""A ChatML chat template that renders tools and tool messages the way Qwen2.5's does (the tools'
schemas in the system message; consecutive tool messages in one user message, each inside
<tool_response> tags), for the tool-call format's tests: the tiny tokenizer's own template renders
plain messages only."""
from __future__ import annotations

TOOL_CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- 'You may call these tools, one JSON object per call between <tool_call> and </tool_call>:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# veRL's search tool config (examples/sglang_multiturn/config/tool_config/search_tool_config.yaml):
# the keys and layout of the published file, a loopback URL
SEARCH_TOOL_YAML = """\
tools:
  - class_name: "verl.tools.search_tool.SearchTool"
    config: {
      "retrieval_service_url": "{url}",
      "num_workers": 120,
      "rate_limit": 120,
      "default_timeout": 30
    }
    tool_schema:
      type: "function"
      function:
        name: "search"
        description: "Searches the web for relevant information based on the given query."
        parameters:
          type: "object"
          properties:
            query_list:
              type: "array"
              item:
                type: "string"
              description: "A list of fully-formed semantic queries. The tool will return search results for each query."
          required: ["query_list"]
"""


def tool_tokenizer():
    """The tiny byte-level tokenizer with TOOL_CHATML_TEMPLATE."""
    from tiny_model import make_tokenizer

    tokenizer = make_tokenizer()
    tokenizer.chat_template = TOOL_CHATML_TEMPLATE
    return tokenizer


def write_tool_config(path, url: str = "http://127.0.0.1:8000/retrieve") -> str:
    path.write_text(SEARCH_TOOL_YAML.replace("{url}", url))
    return str(path)
