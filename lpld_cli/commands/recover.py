"""`lpld recover` (pending its issue)."""

from lpld_cli.commands._pending import pending

command = pending("recover")
