"""Triton kernels of dtifast (installed as ``dtifast.kernels``), one op family per module."""
