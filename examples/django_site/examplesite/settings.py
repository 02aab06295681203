"""Settings of the example site. Everything that differs per run comes from the environment;
``run.py`` (``make example``) sets it, and the rrr service reads the same ``RRR_*`` names."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("EXAMPLE_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("EXAMPLE_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rrr.django",
    "items",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "examplesite.urls"
WSGI_APPLICATION = "examplesite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DB", str(BASE_DIR / "db.sqlite3")),
        # The live server and a command line may write at once; wait for the lock instead of failing.
        "OPTIONS": {"timeout": 20},
    }
}

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
if os.environ.get("EXAMPLE_FAST_PASSWORDS") == "1":
    # The tests sign in often; Django's own advice for test runs (never for real passwords).
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "items"
LOGOUT_REDIRECT_URL = "login"

# -- rrr (docs/guides/django.md) --------------------------------------------------
# The service's Redis, its --token-secret, its socket and its --api-token.
RRR_REDIS_URL = os.environ.get("RRR_REDIS_URL", "redis://127.0.0.1:6379/0")
RRR_TOKEN_SECRET = os.environ.get("RRR_TOKEN_SECRET", "")
RRR_SOCKET_URL = os.environ.get("RRR_SOCKET_URL", "ws://127.0.0.1:8888/ws/")  # "/_rrr/ws/": same origin (nginx)
# run.py --same-origin: rrr asks /rrr/connect/ who a page's session cookie is; pages need no token.
RRR_CONNECT_PROXY = os.environ.get("RRR_CONNECT_PROXY") == "1"
RRR_API_TOKEN = os.environ.get("RRR_API_TOKEN", "")
RRR_API_URL = os.environ.get("RRR_API_URL", "")  # rrr's own address; needed when RRR_SOCKET_URL is a path
# rrr's webhooks come to /rrr/webhook/ (run.py gives rrr --webhook-url and this --webhook-secret):
# items/receivers.py keeps each user's last seen and each page's "open since" from them.
RRR_WEBHOOK_SECRET = os.environ.get("RRR_WEBHOOK_SECRET", "")
# Every signed-in user may join this presence room ("Online now"); each also gets private-user-<pk>.
RRR_PRESENCE_ROOMS = ["presence-site"]
# The chat (/chat/) adds its rooms and a room per pair of users to those grants (chat/rooms.py).
RRR_GRANTS = "chat.rooms.grants"
# rrr's Pusher app (its --pusher-app-id, --pusher-key, --pusher-secret): the /pusher/ page is driven by
# pusher-js, authorized by rrr.django's /rrr/pusher/auth/ and /rrr/pusher/user-auth/.
RRR_PUSHER_KEY = os.environ.get("RRR_PUSHER_KEY", "")
RRR_PUSHER_SECRET = os.environ.get("RRR_PUSHER_SECRET", "")
# where pusher-js connects: rrr's host:port, then a path under the site's own origin (127.0.0.1:8000/_rrr)
RRR_PUSHER_HOST = os.environ.get("RRR_PUSHER_HOST", "127.0.0.1:8888")
# pusher-js's browser build, from the npm dev dependencies of this checkout (`npm ci`); the example serves it.
PUSHER_JS = BASE_DIR.parent.parent / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js"
