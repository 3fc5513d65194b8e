"""`python -m mch`, which launchers run: `torchrun --nproc-per-node N -m mch extract ...`."""

from .cli import main

main()
