"""Evaluation of a checkpoint with the search agent: `python -m rag_r1.eval` (see __main__).

`metrics` (pure: EM/F1, search statistics, evidence recall), `runner` (question loading,
resumable trajectory file, summary), `agent` (the solver around GenerationManager + HFRollout),
`report` (the paper-style Markdown table and PNG of several runs).
"""
