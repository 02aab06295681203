"""``rrr``: the service as an installed command, the same app as ``python app.py`` from a checkout.

The service's code stays where the checkout keeps it (app.py, handlers/, static/, templates/ at the
top); a wheel carries those files as ``rrr/_service/`` (pyproject.toml, package-dir). This module
finds them (the wheel's copy, else the checkout around this package) and runs app.py's ``main``
with that folder first on the path of this process only, so app.py and its handlers import as
they do from a checkout, and no module named ``app`` or ``handlers`` is installed into
site-packages, where a Django project's own would be shadowed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def service_dir() -> Path:
    """The folder holding app.py and handlers/: the wheel's ``rrr/_service``, else a checkout's top."""
    for where in (HERE / "_service", HERE.parent):
        if (where / "app.py").is_file() and (where / "handlers" / "__init__.py").is_file():
            return where
    raise SystemExit("rrr: the service's files are missing from this install; reinstall with pip install 'rrr[server]'")


def main() -> int:
    """Parse the options (and ``RRR_*`` variables) and serve, exactly as ``python app.py`` does."""
    where = str(service_dir())
    if where not in sys.path:
        sys.path.insert(0, where)
    try:
        app = importlib.import_module("app")
    except ModuleNotFoundError as e:
        if e.name in ("app", "handlers") or (e.name or "").startswith("handlers."):
            raise
        raise SystemExit(
            f"rrr: the service needs {e.name}, which is not installed: pip install 'rrr[server]'"
        ) from None
    from . import workers

    return workers.run(app.main)


if __name__ == "__main__":
    sys.exit(main())
