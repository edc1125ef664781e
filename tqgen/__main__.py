"""``python -m tqgen``: see ``tqgen.cli``."""

from tqgen.cli import main

raise SystemExit(main())
