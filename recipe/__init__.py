"""The RAG-R1 recipe: the library's tools run as resumable stages, set by profiles in the trainers' own
keys (configs/recipe/*.yaml). `python -m recipe demo` is `make demo`; recipe/__main__.py says more."""
