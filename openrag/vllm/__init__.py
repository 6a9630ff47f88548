"""Open-RAG in vLLM, out of tree: the architecture (model.py, over experts.py), its registration (:func:`register`,
vLLM's ``vllm.general_plugins`` entry point, so every vLLM process of an environment where openrag is
installed knows it), and the folder vLLM loads (folder.py: merged weights, experts, config naming
:data:`ARCHITECTURE`), written once from any checkpoint openrag loads.

Imports openrag.model, and vllm only in model.py (and inside :func:`register`). The answering engine over
it is ``openrag.answer.vllm_engine``.
"""

ARCHITECTURE = "OpenRAGForCausalLM"
MODEL_CLASS = "openrag.vllm.model:OpenRAGForCausalLM"


def register() -> None:
    """Register :data:`ARCHITECTURE` with vLLM's model registry (by name: the class is imported when a model
    uses it). vLLM calls this in each of its processes; calling it again is harmless."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)


def plugin_installed() -> bool:
    """Whether this environment's package metadata holds the entry point through which vLLM's processes (each
    started afresh) call :func:`register`."""
    from importlib.metadata import entry_points

    return any(ep.value == f"{__name__}:register" for ep in entry_points(group="vllm.general_plugins"))
