"""The revocation list a party relies on: never an older one, and word well before it expires.

Design
------
A CRL is only as good as it is current. Two things go wrong in practice, and this module
guards against both:

* **Rollback.** Copying back an older ``crl.pem`` (from a backup, or from before a
  revocation) would readmit a revoked hospital. Every CRL the consortium signs carries an
  increasing ``CRLNumber`` (:class:`~alliance.crypto.authority.CertificateAuthority`), and a
  party remembers the highest number it has relied on in a small file of its own state
  (:class:`CrlFloor`, written atomically). A CRL with a lower number is refused, also after
  a restart, naming both numbers.
* **Expiry.** An expired CRL makes every handshake and message fail. :func:`crl_notice` says
  so, and warns ``warn_days`` ahead; :class:`CrlNotices` repeats a warning at most once a day
  (an expired list, once an hour) so that a long-running coordinator reminds its operator
  without flooding the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from alliance.core.errors import ConfigError
from alliance.core.files import write_atomically

__all__ = [
    "DEFAULT_WARN_DAYS",
    "CrlFloor",
    "CrlNotices",
    "crl_notice",
    "crl_number",
]

logger = logging.getLogger(__name__)

#: How many days before a CRL expires a party starts to warn.
DEFAULT_WARN_DAYS = 7.0
_DAY_S = 86_400.0
_RENEW = "run 'alliance consortium renew-crl' on the CA machine and copy the new crl.pem to"


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL's ``CRLNumber`` extension (0 for a CRL without one)."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def _show(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


@dataclass(frozen=True)
class CrlFloor:
    """The highest CRL number a party has relied on, kept in a JSON file of its own state.

    Parameters
    ----------
    path
        The file (e.g. ``crl-number.json`` beside the coordinator's audit log, or in a site's
        state folder); it is created on first use.
    """

    path: Path

    def highest(self) -> int:
        """The number recorded (0 when none is).

        Raises
        ------
        ConfigError
            The file exists but is not one this module wrote.
        """
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
            number = state["crl_number"]
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise ConfigError(
                f"cannot read the CRL number recorded in {self.path} ({exc.strerror or exc}); "
                "make its folder readable and writable by this service"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.path} does not record a CRL number ({exc!r}); restore it from a backup, "
                "or delete it to trust the CRL file as it is"
            ) from None
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ConfigError(f"{self.path}: crl_number {number!r} is not a CRL number")
        return number

    def check(self, crl: x509.CertificateRevocationList, where: str) -> None:
        """Raise :class:`ConfigError` if ``crl`` is older than the highest number recorded."""
        number, highest = crl_number(crl), self.highest()
        if number < highest:
            raise ConfigError(
                f"{where} is CRL number {number} (issued {_show(crl.last_update_utc)}), older "
                f"than CRL number {highest} this party already relied on (recorded in "
                f"{self.path}); an older list may readmit a revoked party. Copy the newest "
                "crl.pem from the consortium's ca/ folder, or ask the consortium for one "
                "('alliance consortium renew-crl')"
            )

    def raise_to(self, crl: x509.CertificateRevocationList) -> None:
        """Record ``crl``'s number if it is higher than the one recorded.

        Raises
        ------
        ConfigError
            The file cannot be written.
        """
        number = crl_number(crl)
        if number <= self.highest():
            return
        state = {"crl_number": number, "last_update": _show(crl.last_update_utc)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, (json.dumps(state, indent=2) + "\n").encode())
        except OSError as exc:
            raise ConfigError(
                f"cannot record CRL number {number} in {self.path} ({exc.strerror or exc}); "
                "make its folder writable by this service"
            ) from None


def crl_notice(
    crl: x509.CertificateRevocationList,
    where: Path | str,
    *,
    now: datetime | None = None,
    warn_days: float = DEFAULT_WARN_DAYS,
) -> tuple[int, str] | None:
    """A log level and message if ``crl`` has expired or expires within ``warn_days``.

    Returns
    -------
    tuple[int, str] | None
        ``(logging.ERROR, ...)`` for an expired list, ``(logging.WARNING, ...)`` for one that
        expires soon, ``None`` otherwise (or for a list without ``nextUpdate``).
    """
    next_update = crl.next_update_utc
    if next_update is None:
        return None
    when = datetime.now(UTC) if now is None else now
    left_s = (next_update - when).total_seconds()
    number = crl_number(crl)
    if left_s < 0:
        return logging.ERROR, (
            f"the consortium's revocation list (CRL number {number}, {where}) expired on "
            f"{_show(next_update)}: every party's TLS handshake and message is refused until "
            f"you {_RENEW} {where}; it is picked up without a restart"
        )
    if left_s < warn_days * _DAY_S:
        return logging.WARNING, (
            f"the consortium's revocation list (CRL number {number}, {where}) expires on "
            f"{_show(next_update)}, in {left_s / _DAY_S:.1f} days; then every party is refused. "
            f"Before then, {_RENEW} {where}"
        )
    return None


class CrlNotices:
    """Logs :func:`crl_notice` for the CRL in use: once a day, once an hour when expired.

    Parameters
    ----------
    where
        The CRL file, named in the messages.
    warn_days
        Warn when fewer days than this remain.
    """

    def __init__(self, where: Path | str, *, warn_days: float = DEFAULT_WARN_DAYS) -> None:
        self.where = where
        self.warn_days = warn_days
        self._lock = threading.Lock()
        self._last: tuple[int, int, float] | None = None  # CRL number, level, monotonic time

    def check(self, crl: x509.CertificateRevocationList | None) -> None:
        """Log the notice for ``crl`` unless the same one was logged recently."""
        if crl is None:
            return
        notice = crl_notice(crl, self.where, warn_days=self.warn_days)
        if notice is None:
            return
        level, message = notice
        number, clock = crl_number(crl), time.monotonic()
        every_s = 3600.0 if level >= logging.ERROR else _DAY_S
        with self._lock:
            last = self._last
            if last is not None and last[:2] == (number, level) and clock - last[2] < every_s:
                return
            self._last = (number, level, clock)
        logger.log(level, message)
