"""``python -m app -i IN -o OUT -m MODELS [--preset NAME]``: see app/cli.py."""

from app.cli import main

raise SystemExit(main())
