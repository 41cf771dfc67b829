"""Training configuration as data: the typed schema, shipped presets and the GPU catalog.

A leaf package (pydantic and the stdlib only): services load presets and GPUs through
it; the registry, storage and CLI are none of its business.
"""
