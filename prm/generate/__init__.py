"""Step-label generation: OmegaPRM tree search and Monte Carlo labelling of every prefix.

``python -m prm.generate`` (config ``conf/generate.yaml``; groups ``policy``, ``judge``, ``search``)
turns seed problems into one tree file per seed item and a native training file with soft labels.
"""
