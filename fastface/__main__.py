"""`python -m fastface` (and `torchrun ... -m fastface train ...`): the fastface command."""
import sys

from .cli import main

sys.exit(main())
