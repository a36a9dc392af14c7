"""The app the gunicorn test serves: the tiny host app behind the WSGI door, on the policy at UNIMW_CONFIG."""

from __future__ import annotations

import os

from tests.wsgi.helpers import host_app
from unimw.wsgi import UnimwWSGIMiddleware

app = UnimwWSGIMiddleware(host_app, config=os.environ["UNIMW_CONFIG"])
