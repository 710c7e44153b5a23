"""The search agent: a policy that reasons, searches, reads and answers in one assistant turn.

`actions` parses what the policy wrote, `prompts` owns every instruction text, `observation`
formats retrieved passages, `generation.GenerationManager` runs the multi-turn rollout and
`loop.SearchAgentLoop` plugs it into the trainer (`actor_rollout_ref.rollout.loop`).
"""
