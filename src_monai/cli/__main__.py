"""``python -m src_monai.cli``: the ``lasc`` command (``torchrun ... -m src_monai.cli train``)."""

from src_monai.cli import main

raise SystemExit(main())
