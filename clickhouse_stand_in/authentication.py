"""Who sends a request: the user and password from the X-ClickHouse headers, HTTP Basic auth
or the URL's parameters, or the user and the client certificate of the connection
(``X-ClickHouse-SSL-Certificate-Auth``), checked against the users file with the server's
failure codes and texts."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from email.message import Message

from clickhouse_stand_in.engine import Engine, User
from clickhouse_stand_in.errors import DEFAULT_USER_PASSWORD_HINT, ServerError

_FAILED = "{user}: Authentication failed: password is incorrect, or there is no user with such name"


def authenticate(
    headers: Message,
    params: list[tuple[str, str]],
    users: Mapping[str, User],
    engine: Engine,
    certificate_subjects: frozenset[str] = frozenset(),
) -> User:
    """authenticateUserByHTTP and AccessControl::authenticate, for plain passwords and for
    client certificates (``certificate_subjects``, those of the verified certificate the
    connection's client sent)."""
    user = headers.get("X-ClickHouse-User", "")
    password = headers.get("X-ClickHouse-Key", "")
    authorization = headers.get("Authorization")
    in_params = any(key in ("user", "password") for key, _ in params)

    def refuse(message: str) -> ServerError:
        return engine.error("AUTHENTICATION_FAILED", message)

    def both(first: str, second: str) -> ServerError:
        return refuse(
            f"Invalid authentication: it is not allowed to use {first} and {second} simultaneously"
        )

    def named(name: str, method: str) -> str:
        if not name:
            raise refuse(f"Got an empty user name from {method}")
        return name

    if headers.get("X-ClickHouse-SSL-Certificate-Auth", "") == "on":
        named(user, "X-ClickHouse HTTP headers")
        if authorization is not None:
            raise both("SSL certificate authentication", "Authorization HTTP header")
        if password:
            raise both("SSL certificate authentication", "authentication via password")
        if not certificate_subjects:
            raise refuse(
                "Invalid authentication: SSL certificate authentication requires "
                "nonempty certificate's Common Name or Subject Alternative Name"
            )
        known = users.get(user)
        if known and known.certificate_subjects & certificate_subjects:
            return known
        raise refuse(_FAILED.format(user=user))
    if user or password:
        named(user, "X-ClickHouse HTTP headers")
        if authorization is not None:
            raise both("X-ClickHouse HTTP headers", "Authorization HTTP header")
        if in_params:
            raise both("X-ClickHouse HTTP headers", "authentication via parameters")
    elif authorization is not None:
        if in_params:
            raise both("Authorization HTTP header", "authentication via parameters")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            raise refuse(
                f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported"
            )
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise refuse("Invalid authentication: malformed Basic credentials") from None
        user, _, password = decoded.partition(":")
        named(user, "Authorization HTTP header")
    else:
        user = next((value for key, value in params if key == "user"), "default")
        password = next((value for key, value in params if key == "password"), "")
        named(user, "authentication via parameters")

    known = users.get(user)
    if (
        known
        and known.password is not None
        and hmac.compare_digest(known.password.encode(), password.encode())
    ):
        return known
    message = _FAILED.format(user=user)
    if user == "default":
        # Browsers get a Basic-auth prompt for the default user: 401, not 403.
        name = "REQUIRED_PASSWORD" if authorization != "never" else "AUTHENTICATION_FAILED"
        raise engine.error(name, message + DEFAULT_USER_PASSWORD_HINT)
    raise refuse(message)
