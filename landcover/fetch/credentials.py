"""USGS credentials: a username plus an application token, kept out of every log and message.

The library never reads the environment itself (STYLE rule 7): the CLI and the
pipelines pass ``os.environ`` (or any mapping) and the ``.netrc`` path in
explicitly. The token is wrapped in :class:`Secret`, whose ``str``/``repr`` are
``'***'``; :func:`redact` scrubs known secrets out of any text before it is
shown to a user.
"""

from __future__ import annotations

import netrc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import AuthError

__all__ = [
    "Secret",
    "Credentials",
    "load_credentials",
    "redact",
    "USERNAME_VAR",
    "TOKEN_VAR",
    "NETRC_MACHINE",
]

USERNAME_VAR = "LANDCOVER_USGS_USERNAME"
TOKEN_VAR = "LANDCOVER_USGS_TOKEN"
NETRC_MACHINE = "m2m.cr.usgs.gov"
_MASK = "***"


class Secret:
    """A string that never shows itself in ``str``, ``repr`` or f-strings.

    Parameters
    ----------
    value
        The secret text (an application token or an API key).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("a secret must be a non-empty string")
        self._value = value

    def reveal(self) -> str:
        """Return the secret text; only for the HTTP request that needs it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret objects cannot be pickled")


@dataclass(frozen=True)
class Credentials:
    """An ERS username and an M2M application token (``login-token``).

    Parameters
    ----------
    username
        The ERS (USGS EarthExplorer) user name.
    token
        The application token generated in the ERS profile (not the password).
    source
        Where the credentials came from (for messages), e.g. ``"environment"``.
    """

    username: str
    token: Secret
    source: str = "arguments"

    def __post_init__(self) -> None:
        if not self.username or not self.username.strip():
            raise ValueError("username must not be empty")
        if not isinstance(self.token, Secret):
            raise ValueError("token must be a Secret (wrap it: Secret(text))")

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, token={_MASK!r}, source={self.source!r})"


def load_credentials(
    *,
    env: Mapping[str, str] | None = None,
    username_var: str = USERNAME_VAR,
    token_var: str = TOKEN_VAR,
    netrc_path: str | Path | None = None,
    machine: str = NETRC_MACHINE,
) -> Credentials:
    """Find M2M credentials in ``env`` first, then in a ``.netrc`` file.

    Parameters
    ----------
    env
        A mapping of environment variables (the caller passes ``os.environ``);
        ``None`` skips this source.
    username_var, token_var
        Names of the variables holding the user name and the application token.
    netrc_path
        A netrc file whose ``machine`` entry has ``login USER`` and ``password TOKEN``;
        ``None`` skips this source.
    machine
        The netrc machine name.

    Returns
    -------
    Credentials

    Raises
    ------
    AuthError
        When neither source has both values. The message says where to put them
        and never contains a secret.
    """
    if env is not None:
        user, token = env.get(username_var, "").strip(), env.get(token_var, "").strip()
        if user and token:
            return Credentials(user, Secret(token), source=f"${username_var}/${token_var}")
        if user or token:
            missing = token_var if user else username_var
            raise AuthError(f"${missing} is not set (both ${username_var} and ${token_var} are needed)")
    if netrc_path is not None:
        path = Path(netrc_path).expanduser()
        if path.is_file():
            try:
                entry = netrc.netrc(str(path)).authenticators(machine)
            except netrc.NetrcParseError as exc:
                # The parser's own message can quote a token from the file: never show it.
                raise AuthError(f"{path}: cannot parse netrc file (line {exc.lineno})") from None
            except OSError as exc:
                raise AuthError(f"{path}: cannot read netrc file ({exc.strerror})") from None
            if entry is not None:
                login, _account, password = entry
                if login and password:
                    return Credentials(login, Secret(password), source=str(path))
                raise AuthError(f"{path}: machine {machine} needs both 'login' and 'password' (the token)")
    raise AuthError(
        f"no USGS M2M credentials: set ${username_var} and ${token_var} (an application token from your "
        f"ERS profile, not the password), or add 'machine {machine} login USER password TOKEN' to "
        f"{netrc_path if netrc_path is not None else '~/.netrc'}"
    )


def redact(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """Replace every occurrence of each secret in ``text`` by ``***``.

    Parameters
    ----------
    text
        Any message about to be logged or raised.
    secrets
        The secrets (or raw strings) to remove; ``None`` entries are ignored.
    """
    for s in secrets:
        if s is None:
            continue
        raw = s.reveal() if isinstance(s, Secret) else s
        if raw and len(raw) >= 4:
            text = text.replace(raw, _MASK)
    return text
