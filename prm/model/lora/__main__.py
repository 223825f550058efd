"""``python -m prm.model.lora merge <checkpoint or run> <out>``: see :mod:`prm.model.lora.merge`."""

import sys

from prm.model.lora.merge import main

sys.exit(main())
