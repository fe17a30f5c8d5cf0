"""Packaging that pyproject.toml cannot say: the notebooks ship inside the wheel.

The notebooks stay in the repository's top-level ``notebooks/`` (JupyterLab opens them from
there); the wheel carries the same files as ``labkit/lab_notebooks/``, so an installed labkit
(``pip install labkit-*.whl``) runs ``labkit run`` and ``labkit pipeline`` without a checkout.
``labkit.notebooks.notebook_dir`` finds them in either place. Everything else is in
pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["labkit", "labkit.*"]), "labkit.lab_notebooks"],
    package_dir={"labkit.lab_notebooks": "notebooks"},
    package_data={"labkit.lab_notebooks": ["*.ipynb"], "labkit.recipes": ["*.yaml"]},
)
