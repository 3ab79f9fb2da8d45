"""dtifast: fast DTI-Sprites (layered image decomposition into learned sprites).

Subpackages: :mod:`dtifast.ops` (warps, compositing, greedy selection; fused backends),
:mod:`dtifast.model` (the DTI-Sprites model), :mod:`dtifast.data` (datasets and generators).

``dtifast.decompose(model, images) -> dtifast.Decomposition``: the layered decomposition of new images.
"""
__version__ = "0.1.0"

__all__ = ["Decomposition", "decompose", "__version__"]


def __getattr__(name: str):
    # Loaded on first use, so that `import dtifast` stays light (no torch until something needs it).
    if name in ("Decomposition", "decompose"):
        from . import decomposition
        return getattr(decomposition, name)
    raise AttributeError(f"module 'dtifast' has no attribute {name!r}")
