"""`python -m fastface` (and `torchrun ... -m fastface train ...`): the fastface command."""
from .cli import main
from .train.distributed import exit_process

exit_process(main())
