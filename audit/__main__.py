"""`python <pack>/audit ...` (or `python -m audit` inside the pack folder): see audit/cli.py."""

import sys
from pathlib import Path

if __package__ in (None, "", "audit"):
    # the pack is imported as `memguard`, never with its folder on sys.path (its nodes/ would
    # shadow ComfyUI's nodes.py): bootstrap.py is loaded by path, then the real package
    import importlib.util

    _spec = importlib.util.spec_from_file_location("_memguard_audit_bootstrap", Path(__file__).with_name("bootstrap.py"))
    _bootstrap = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_bootstrap)
    _bootstrap.load_pack(Path(__file__).resolve().parents[1])
    from memguard.audit.cli import main
else:
    from .cli import main

sys.exit(main())
