"""Bundled YAML configs (installed as dtifast.configs): upstream's seven datasets and small demo configs."""
