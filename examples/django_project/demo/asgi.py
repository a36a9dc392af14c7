"""ASGI entry point (``uvicorn demo.asgi:application``): the lifespan closes the gateway at shutdown."""

import os

from django.core.asgi import get_asgi_application

from unimw.django import lifespan

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
application = lifespan(get_asgi_application())
