# intent_ref: platform.gateway
"""Write the gateway's OpenAPI document to docs/openapi.json (API Management imports that file)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPENAPI_PATH = ROOT / "docs" / "openapi.json"

# Building the app validates settings; the schema does not depend on their values, and nothing connects.
_PLACEHOLDER_SETTINGS = {
    "QP_DATABASE_URL": "host=/nonexistent",
    "QP_DATABASE_CONTROL_URL": "host=/nonexistent",
    "QP_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true",
}


def render_openapi() -> str:
    """The OpenAPI document of the gateway as stable, pretty JSON."""
    sys.path.insert(0, str(ROOT))
    # Imported before the block whose cleanup calls it, so that an import error below shows as itself.
    from shared.config import get_settings

    added = [key for key in _PLACEHOLDER_SETTINGS if key not in os.environ]
    for key in added:
        os.environ[key] = _PLACEHOLDER_SETTINGS[key]
    try:
        from shared.api.app import create_app

        schema: dict[str, Any] = create_app().openapi()
    finally:
        # Leave the process as it was: placeholders must not leak into what runs next (tests start hosts).
        for key in added:
            del os.environ[key]
        get_settings.cache_clear()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Write docs/openapi.json; with --check, fail when it is stale instead."""
    rendered = render_openapi()
    if "--check" in sys.argv[1:]:
        current = OPENAPI_PATH.read_text(encoding="utf-8") if OPENAPI_PATH.exists() else ""
        if current != rendered:
            print("docs/openapi.json is stale: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    OPENAPI_PATH.write_text(rendered, encoding="utf-8")
    print(f"wrote {OPENAPI_PATH.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
