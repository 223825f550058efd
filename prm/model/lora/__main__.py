"""``python -m prm.model.lora merge <checkpoint or run> <out>``: see :mod:`prm.model.lora.merging`."""

import sys

from prm.model.lora.merging import main

sys.exit(main())
