"""Upper-level parameters of bi-level reweighting: how much each training chain counts.

Every reweighter maps a lower-level batch (plus the PRM's scores and per-example losses) to one
weight per chain. ``none`` has no module; the others are built from ``conf/reweight/<name>.yaml``
(a strategy is one module here plus that YAML: its ``module._target_`` names the class):

- :class:`DomainTable` (DreamPRM): one weight per domain;
- :class:`InstanceTable` (DreamPRM-1.5): one weight per training instance;
- :class:`InstanceNet` (DreamPRM-1.5): a small net from detached features of the chain to its weight;

and two baselines that learn nothing (no upper problem), for the learned weights to beat:

- :class:`SmallLoss`: drop the highest-loss chains of each batch after a warm-up;
- :class:`Oracle`: drop the chains known to be corrupted (data that says which).
"""

from prm.reweight.base import ParameterGroup, Reweighter, TrainingSet
from prm.reweight.domain_table import DomainTable
from prm.reweight.instance_net import InstanceNet
from prm.reweight.instance_table import InstanceTable
from prm.reweight.oracle import Oracle
from prm.reweight.small_loss import SmallLoss

__all__ = [
    "Reweighter",
    "ParameterGroup",
    "TrainingSet",
    "DomainTable",
    "InstanceTable",
    "InstanceNet",
    "SmallLoss",
    "Oracle",
]
