"""`python -m imessage_channel`: the same as the `imessage-channel` console script."""

import sys

from .cli import main

sys.exit(main())
