"""One module per stage command: its flags (``configure_parser``) and ``run``."""
