"""A small REST client: the token, the base URL, and the mapping of failures to exit codes."""

import json
import os
from urllib.parse import quote, urljoin, urlsplit

import requests

from .errors import AUTHENTICATION_FAILED, REFUSED, UNREACHABLE, CliError, sentence, usage_error

CONNECT_TIMEOUT_S = 10
# Uploads are hashed and stored before the server answers; allow it time for large ones.
READ_TIMEOUT_S = 600
USER_AGENT = "neocloud-cli/0.1"


def path(*segments: str) -> str:
    """An API path from URL-quoted segments, with the trailing slash the API uses."""
    return "/api/v1/" + "".join(quote(str(segment), safe="") + "/" for segment in segments)


class Api:
    def __init__(self, base_url: str | None, token: str | None):
        if not base_url:
            raise usage_error("Set NEOCLOUD_URL (or pass --url) to the Neocloud server's address, "
                              "such as https://neocloud.example.")
        if not base_url.startswith(("http://", "https://")):
            raise usage_error(f"The Neocloud URL {base_url} does not start with http:// or https://.")
        if not _host_of(base_url):
            raise usage_error(f"The Neocloud URL {base_url} names no valid host.")
        if not token:
            raise usage_error("Set NEOCLOUD_TOKEN to an API token (nct_...) for the tenant.")
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT,
                                     "Accept": "application/json"})

    @classmethod
    def from_environment(cls, url_override: str | None = None) -> "Api":
        return cls(url_override or os.environ.get("NEOCLOUD_URL"), os.environ.get("NEOCLOUD_TOKEN"))

    def get(self, api_path: str, **params) -> dict:
        return self.call("GET", api_path, params=params or None)[1]

    def call(self, method: str, api_path: str, **kwargs) -> tuple[int, dict]:
        """(status, JSON body) of a 2xx answer; every other outcome raises CliError."""
        url = urljoin(self.base_url + "/", api_path.lstrip("/"))
        try:
            response = self.session.request(method, url, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S), **kwargs)
        except requests.exceptions.InvalidURL as exc:
            raise usage_error(f"The Neocloud URL {self.base_url} is not valid ({_short(exc)}).") from None
        except requests.exceptions.RequestException as exc:
            raise CliError(UNREACHABLE, "unreachable",
                           sentence(f"Cannot reach Neocloud at {self.base_url}: {network_reason(exc)}")) from None
        body = _json_body(response)
        if 200 <= response.status_code < 300:
            return response.status_code, body
        raise api_error(self.base_url, response.status_code, body)


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:  # such as an unclosed IPv6 bracket
        return None


def _json_body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return {}
    return body if isinstance(body, dict) else {"results": body}


def api_error(base_url: str, status: int, body: dict) -> CliError:
    code = str(body.get("code") or f"http_{status}")
    detail = str(body["detail"]) if body.get("detail") else None
    fields = body.get("fields") if isinstance(body.get("fields"), dict) else {}
    details = [f"{name}: {message}" for name, messages in fields.items()
               for message in (messages if isinstance(messages, list) else [messages])
               if detail not in (message, f"{name}: {message}")]  # not what the detail already says
    if status == 401:
        return CliError(AUTHENTICATION_FAILED, code, sentence(f"Authentication failed: {detail or 'no reason given'}"),
                        details=details, fields=fields, body=body)
    if status >= 500 or status < 400:
        explanation = f": {detail}" if detail else ""
        return CliError(UNREACHABLE, code if detail else "server_error",
                        sentence(f"Neocloud at {base_url} failed with HTTP {status}{explanation}"), body=body)
    return CliError(REFUSED, code, sentence(detail or f"The server refused the request with HTTP {status}"),
                    details=details, fields=fields, body=body)


def network_reason(error: BaseException) -> str:
    """A short reason from requests' nested connection errors ("connection refused")."""
    if isinstance(error, requests.exceptions.Timeout):
        return "the server did not answer in time"
    if isinstance(error, requests.exceptions.SSLError):
        return f"the TLS connection failed ({_short(error)})"
    root = _root_os_error(error)
    if root is not None and root.strerror:
        return root.strerror[0].lower() + root.strerror[1:]
    return _short(error)


def _root_os_error(error: BaseException, seen=None) -> OSError | None:
    """The innermost OSError with a strerror, found through causes, contexts and `reason`s."""
    seen = seen or set()
    if error is None or id(error) in seen:
        return None
    seen.add(id(error))
    inner = [error.__cause__, error.__context__, getattr(error, "reason", None),
             *[arg for arg in getattr(error, "args", ()) if isinstance(arg, BaseException)]]
    for candidate in inner:
        if isinstance(candidate, BaseException):
            found = _root_os_error(candidate, seen)
            if found is not None:
                return found
    return error if isinstance(error, OSError) and error.strerror else None


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200].rstrip(".") or type(error).__name__
