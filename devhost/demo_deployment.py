# intent_ref: platform.devhost
"""A stand-in for the application the demo deploys: its health endpoint, which the seed blueprint's
`verify-deployment` step checks through the demo tenants' `base_url` (nothing is deployed locally)."""

from __future__ import annotations

from aiohttp import web

BASE_PATH = "/devhost/demo/deployment"
HEALTH_ROUTE = f"{BASE_PATH}/health"


class DemoDeployment:
    """Serves `GET /devhost/demo/deployment/health`: 200 `{"status": "healthy"}`, public like a real app's."""

    def add_routes(self, app: web.Application) -> None:
        """Register the health route."""
        app.router.add_get(HEALTH_ROUTE, self._health)

    async def start(self) -> None:
        """Nothing to start."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "app": "demo"})
