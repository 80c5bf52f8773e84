"""`python -m longrec.cf` (longrec.cf.command)."""

from longrec.cf.command import main

raise SystemExit(main())
