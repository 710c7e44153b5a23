"""The search agent: a policy that reasons, searches, reads and answers in one assistant turn.

`actions` parses what the policy wrote, `prompts` owns every instruction text, `modes` formats
retrieved passages per mode, `tool_formats` says how a search is asked for and answered (RAG-R1's
tags or veRL's search tool), `generation` holds the turn rules and the batch rollout
(`GenerationManager`), `async_agent` the per-trajectory rollout on rollout servers, and
`loop.SearchAgentLoop` plugs them into the trainer (`actor_rollout_ref.rollout.loop`).
"""
