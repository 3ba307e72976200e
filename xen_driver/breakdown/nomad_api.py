"""The few GETs the breakdown makes against Nomad's HTTP API (stdlib ``urllib`` only), with the
nomad CLI's environment variables, and its answers turned into :class:`BreakdownError` lines.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from xen_driver.breakdown.model import BreakdownError


class NotFound(BreakdownError):
    pass


class NomadAPI:
    """The few GETs the breakdown needs.  Honours NOMAD_ADDR, NOMAD_TOKEN, NOMAD_NAMESPACE,
    NOMAD_CACERT and NOMAD_SKIP_VERIFY like the nomad CLI."""

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        namespace: str | None = None,
        timeout: float = 15.0,
        env: dict[str, str] | None = None,
    ):
        environ: Mapping[str, str] = os.environ if env is None else env
        self.address = (address or environ.get("NOMAD_ADDR") or "http://127.0.0.1:4646").rstrip("/")
        if "://" not in self.address:
            self.address = "http://" + self.address
        self.token = token if token is not None else environ.get("NOMAD_TOKEN") or None
        self.namespace = namespace or environ.get("NOMAD_NAMESPACE") or "default"
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if self.address.startswith("https://"):
            self._ssl = ssl.create_default_context(cafile=environ.get("NOMAD_CACERT") or None)
            if environ.get("NOMAD_SKIP_VERIFY", "").lower() in ("1", "true"):
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE

    def get(self, path: str, **params: str) -> Any:
        query = {"namespace": self.namespace, **params}
        url = f"{self.address}{path}?{urllib.parse.urlencode(query)}"
        req = urllib.request.Request(url, headers={"X-Nomad-Token": self.token} if self.token else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            text = " ".join(exc.read().decode(errors="replace").split())[:200]
            if exc.code == 404:
                raise NotFound(f"{path}: {text or 'not found'}") from None
            if exc.code == 403:
                raise BreakdownError(
                    f"Nomad at {self.address} refused {path}: {text or 'permission denied'} (is NOMAD_TOKEN set?)"
                ) from None
            raise BreakdownError(f"Nomad at {self.address} answered {exc.code} to {path}: {text}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BreakdownError(f"cannot reach Nomad at {self.address}: {reason}") from None
        try:
            return json.loads(body or b"null")
        except ValueError:
            raise BreakdownError(f"Nomad at {self.address} sent something that is not JSON for {path}") from None
