"""``python -m cifllm.cli <stage> ...`` (what ``torchrun -m cifllm.cli pretrain`` launches on every rank)."""

import sys

from cifllm.cli import main

sys.exit(main())
