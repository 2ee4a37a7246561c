"""`python -m fastresnet`: the `fastresnet` command."""
import sys

from .cli import main

sys.exit(main())
