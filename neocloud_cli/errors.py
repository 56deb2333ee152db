"""Exit codes and the one error type every command raises."""

OK = 0
NOT_VERIFIED = 1
LOCAL_ERROR = 2  # usage, or a bad local input: file, spec, key
REFUSED = 3  # the server refused the request (4xx)
UNREACHABLE = 4  # the server cannot be reached, or failed (5xx)
AUTHENTICATION_FAILED = 5  # 401

EXIT_CODES_HELP = """exit codes:
  0  success
  1  verification failed: the signature does not verify (locally, or on the server)
  2  usage or local input error (bad file, invalid spec, bad key)
  3  the server refused the request (HTTP 4xx)
  4  cannot reach the server, or it failed (HTTP 5xx)
  5  authentication failed (HTTP 401): a missing, unknown, revoked or expired token
"""


class CliError(Exception):
    """A failure to report: one plain sentence, a stable code, and the exit status.

    `details` are extra lines (such as field messages) shown below the sentence; `body` is
    the server's error body, when the server answered.
    """

    def __init__(self, exit_code: int, code: str, detail: str, *, details: list[str] = (),
                 fields: dict | None = None, body: dict | None = None):
        super().__init__(detail)
        self.exit_code = exit_code
        self.code = code
        self.detail = detail
        self.details = list(details)
        self.fields = fields or {}
        self.body = body or {}


def usage_error(detail: str) -> CliError:
    return CliError(LOCAL_ERROR, "usage", detail)


def input_error(detail: str, *, code: str = "invalid_input", details: list[str] = (),
                fields: dict | None = None) -> CliError:
    return CliError(LOCAL_ERROR, code, detail, details=details, fields=fields)


def sentence(text: str) -> str:
    """`text` on one line, ending with a full stop."""
    text = " ".join(str(text).split())
    return text if text.endswith((".", "?", "!")) else text + "."
