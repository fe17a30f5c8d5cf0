"""labkit: a notebook and visualization lab for self-supervised ViTs that discover and track
objects.

Data flows one way::

    labkit.video -> labkit.models -> labkit.attention -> labkit.tracking / labkit.clustering
                 -> labkit.viz / labkit.eval

Importing ``labkit`` imports nothing heavy; import the submodule you need.
"""

__version__ = "0.1.0"
