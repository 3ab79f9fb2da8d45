"""dtifast: fast DTI-Sprites (layered image decomposition into learned sprites).

Subpackages: :mod:`dtifast.ops` (warps, compositing, greedy selection; fused backends),
:mod:`dtifast.model` (the DTI-Sprites model), :mod:`dtifast.data` (datasets and generators).
"""
__version__ = "0.1.0"
