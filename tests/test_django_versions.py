"""``pip install 'rrr[django]'`` works on every Django the extra accepts (``Django>=4.2,<7``): the suite
itself runs on the dev venv's Django (5.2); here the built wheel goes into a fresh venv outside the
checkout with Django 4.2 LTS, and a small site there passes ``manage.py check``, renders
``{% rrr_scripts %}``, hands out a token a real rrr accepts, and publishes on commit to a real rrr
socket through a real Redis. (Django 6 needs Python 3.12; this venv's Python is 3.11.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rrr.backplane.embedded import EmbeddedRedis
from support.clients import Client, connect
from support.processes import REQUIRE_ALL
from support.servers import ServerFactory
from support.wheel import build_wheel

SECRET = "django-lts-token-secret-of-decent-length"
ROOM = "lts-news"

SETTINGS = """
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "lts-" * 13
DEBUG = True
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = [
    "django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
    "django.contrib.staticfiles", "rrr.django",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(BASE_DIR / "db.sqlite3")}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
USE_TZ = True
RRR_REDIS_URL = os.environ["RRR_REDIS_URL"]
RRR_TOKEN_SECRET = os.environ["RRR_TOKEN_SECRET"]
RRR_SOCKET_URL = "/_rrr/ws/"
RRR_PRESENCE_ROOMS = ["presence-site"]
"""

URLS = """
from django.urls import include, path

urlpatterns = [path("rrr/", include("rrr.django.urls"))]
"""

MANAGE = """
import os, sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""

# What a site's code does with rrr.django, on whatever Django the venv has.
PROBE = """
import json, django
django.setup()
import rrr
from django.contrib.auth.models import User
from django.db import transaction
from django.template import Context, Template
from django.test import Client
from rrr.django import publish_on_commit

user = User.objects.create_user("alice", password="pw")
client = Client()
client.force_login(user)
answer = client.get("/rrr/token/")
with transaction.atomic():
    publish_on_commit("%(room)s", {"from": "django", "version": django.get_version()})
print(json.dumps({
    "django": django.get_version(), "rrr": rrr.__file__, "user": str(user.pk),
    "scripts": Template("{%% load rrr %%}{%% rrr_scripts %%}").render(Context({})),
    "token_status": answer.status_code, "token": answer.content.decode(),
}))
""" % {"room": ROOM}


@pytest.fixture(scope="module")
def lts_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh venv with the wheel and ``rrr[django]`` on Django 4.2 (pip through the configured
    index, its cache under the test's tmp), and a site that uses it; (venv python, site dir)."""
    tmp = tmp_path_factory.mktemp("django-lts")
    wheel = build_wheel(tmp / "wheel")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--disable-pip-version-check",
         "--cache-dir", str(tmp / "pip-cache"), f"{wheel}[django]", "Django==4.2.*"],
        capture_output=True, text=True, timeout=600,
    )
    if done.returncode != 0:
        why = f"could not install rrr[django] with Django 4.2: {done.stderr[-2000:]}"
        if REQUIRE_ALL:
            pytest.fail(why)
        pytest.skip(why)
    site = tmp / "site"
    site.mkdir()
    for name, text in (("settings.py", SETTINGS), ("urls.py", URLS), ("manage.py", MANAGE), ("probe.py", PROBE)):
        (site / name).write_text(text)
    return python, site


def environment(python: Path, redis_url: str) -> dict[str, str]:
    """Nothing of the checkout on the path: the venv's rrr and Django only."""
    return {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
            "DJANGO_SETTINGS_MODULE": "settings", "RRR_REDIS_URL": redis_url, "RRR_TOKEN_SECRET": SECRET}


async def run(python: Path, site: Path, env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(python), *args, cwd=site, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out.decode()}\n{err.decode()}"
    return out.decode()


@pytest.mark.slow
@pytest.mark.gen_test(timeout=300)
async def test_the_django_side_works_on_django_4_2_lts(
    lts_site: tuple[Path, Path], redis_server: EmbeddedRedis, server_factory: ServerFactory, clients: list[Client],
) -> None:
    python, site = lts_site
    env = environment(python, redis_server.url)
    server = await server_factory(token_secret=SECRET)
    page = await connect(server.ws_url("/ws/"))
    clients.append(page)
    await page.send(type="subscribe", room=ROOM, sub="tab")
    await page.settles_on(1, 1, room=ROOM)

    assert "System check identified no issues" in await run(python, site, env, "manage.py", "check")
    await run(python, site, env, "manage.py", "migrate", "--noinput", "-v", "0")
    got = json.loads((await run(python, site, env, "probe.py")).strip().splitlines()[-1])
    assert got["django"].startswith("4.2."), got["django"]
    assert got["rrr"].startswith(str(python.parent.parent)), "rrr imported from the venv, not the checkout"

    # publish_on_commit, after the commit, through the Redis rrr reads, to rrr's socket.
    message = await page.next("message", after=0)
    assert message["room"] == ROOM and message["data"] == {"from": "django", "version": got["django"]}

    # The token view's token is one rrr accepts, for that user.
    assert got["token_status"] == 200
    await page.send(type="auth", token=got["token"])
    authenticated = await page.next("authenticated")
    assert authenticated["user"] == got["user"]

    # The template tag: the library beside RRR_SOCKET_URL, never the site's /static/.
    assert '"rrr":"/_rrr/static/js/rrr.js"' in got["scripts"]
    assert '"rrr/django":"/static/rrr/django.js"' in got["scripts"]
