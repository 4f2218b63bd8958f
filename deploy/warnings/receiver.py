"""Example receiver for the culler's stop-warning webhook: checks a shared secret, sends an e-mail.

Standalone (Python 3.11 standard library + aiohttp). Configuration from the environment:

    RECEIVER_SECRET         expected value of the secret header; unset: no check
    RECEIVER_SECRET_HEADER  header name (default Authorization), e.g. with "Bearer <token>" as secret
    SMTP_HOST, SMTP_PORT    mail relay (default localhost:25)
    SMTP_FROM               sender address (default jupyterhub@localhost)
    SMTP_STARTTLS           1/true: STARTTLS before sending
    SMTP_USER, SMTP_PASSWORD  optional SMTP login
    MAIL_TO                 recipient template (default {user}@example.org); {user} and {server} expand

Run: ``python receiver.py --port 8900`` (``--dry-run`` prints the mails to stdout instead of sending).
Answers 204 when handled, 400 for a payload it cannot read, 401 for a missing or wrong secret and 502
when the mail relay fails (the culler retries 5xx answers).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import smtplib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiohttp import web

SUBJECTS = {
    "warning": "Your Jupyter server will be stopped soon",
    "stopped": "Your Jupyter server was stopped",
}


@dataclass(frozen=True)
class Config:
    secret: str | None = None
    secret_header: str = "Authorization"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_from: str = "jupyterhub@localhost"
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = None
    mail_to: str = "{user}@example.org"
    dry_run: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], dry_run: bool = False) -> Config:
        return cls(
            secret=env.get("RECEIVER_SECRET") or None,
            secret_header=env.get("RECEIVER_SECRET_HEADER") or "Authorization",
            smtp_host=env.get("SMTP_HOST") or "localhost",
            smtp_port=int(env.get("SMTP_PORT") or 25),
            smtp_from=env.get("SMTP_FROM") or "jupyterhub@localhost",
            smtp_starttls=(env.get("SMTP_STARTTLS") or "").lower() in ("1", "true", "yes"),
            smtp_user=env.get("SMTP_USER") or None,
            smtp_password=env.get("SMTP_PASSWORD") or None,
            mail_to=env.get("MAIL_TO") or "{user}@example.org",
            dry_run=dry_run,
        )


def compose(config: Config, payload: dict[str, Any]) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = config.smtp_from
    mail["To"] = config.mail_to.format(user=payload["user"], server=payload.get("server") or "")
    mail["Subject"] = SUBJECTS[payload["event"]]
    lines = [str(payload.get("message") or ""), "", f"Reason: {payload.get('reason')}"]
    if payload.get("activity_page"):
        lines += ["", f"Your activity as the culler sees it: {payload['activity_page']}"]
    mail.set_content("\n".join(lines) + "\n")
    return mail


def send_smtp(config: Config, mail: EmailMessage) -> None:
    with smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=30) as smtp:
        if config.smtp_starttls:
            smtp.starttls()
        if config.smtp_user:
            smtp.login(config.smtp_user, config.smtp_password or "")
        smtp.send_message(mail)


def _valid(payload: object) -> bool:
    return (
        isinstance(payload, dict)
        and payload.get("event") in SUBJECTS
        and isinstance(payload.get("user"), str)
        and bool(payload["user"])
    )


def make_app(config: Config, send: Callable[[Config, EmailMessage], None] = send_smtp) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        if config.secret is not None:
            given = request.headers.get(config.secret_header, "")
            if not hmac.compare_digest(given.encode(), config.secret.encode()):
                return web.Response(status=401, text="wrong or missing secret\n")
        try:
            payload = await request.json()
        except ValueError:
            return web.Response(status=400, text="not JSON\n")
        if not _valid(payload):
            return web.Response(status=400, text="not a culler notification\n")
        mail = compose(config, payload)
        if config.dry_run:
            print(mail.as_string(), flush=True)
            return web.Response(status=204)
        try:
            await asyncio.to_thread(send, config, mail)
        except (OSError, smtplib.SMTPException) as error:
            print(f"mail to {mail['To']} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            return web.Response(status=502, text="mail relay failed\n")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/", receive)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--dry-run", action="store_true", help="print mails to stdout instead of sending them")
    args = parser.parse_args(argv)
    web.run_app(make_app(Config.from_env(os.environ, dry_run=args.dry_run)), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
