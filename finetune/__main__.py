"""`python -m finetune` (train), `python -m finetune merge NAME --out DIR`, `python -m finetune synth --out FILE --n N`."""
from finetune.cli import main

raise SystemExit(main())
