"""`neocloud`: sign and verify models offline, register workflow versions, upload artifacts.

Configuration comes from the environment: NEOCLOUD_URL (the server) and NEOCLOUD_TOKEN (an
API token, which names its tenant). Every command takes --json for one JSON object on stdout.
"""

import argparse
import logging
import os
import sys
import traceback

from .errors import EXIT_CODES_HELP, LOCAL_ERROR, CliError, sentence, usage_error
from .output import Output

DESCRIPTION = ("The Neocloud command line: sign and verify models offline, register workflow versions, "
               "and upload artifacts. The server is NEOCLOUD_URL; the API token is NEOCLOUD_TOKEN.")


class Parser(argparse.ArgumentParser):
    """argparse that raises a usage CliError (so --json can report it) instead of exiting."""

    def error(self, message):
        raise usage_error(f"{message[0].upper()}{message[1:]} (see '{self.prog} --help').")


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS: a subcommand's default must not overwrite a value given before the subcommand.
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON object on stdout (errors too: {\"error\": {\"code\", \"detail\"}})")
    common.add_argument("--url", default=argparse.SUPPRESS, help="the Neocloud server (default: $NEOCLOUD_URL)")
    return common


def _signing_key_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--key", required=required, help="the PEM private key (EC) to sign with")
    parser.add_argument("--password-env", metavar="VAR", help="the environment variable holding the key's password")
    parser.add_argument("--cert", help="the signing certificate (PEM): certificate mode instead of key mode")
    parser.add_argument("--chain", action="append", default=[], metavar="PEMFILE",
                        help="a CA certificate above the signing certificate (repeatable)")


def _tenant_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", help="the tenant (default: the one NEOCLOUD_TOKEN is scoped to)")


def build_parser() -> Parser:
    common = _common_options()
    parser = Parser(prog="neocloud", description=DESCRIPTION, epilog=EXIT_CODES_HELP, parents=[common],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_sign(commands, common)
    _add_verify(commands, common)
    _add_workflow(commands, common)
    _add_artifact(commands, common)
    return parser


def _add_sign(commands, common) -> None:
    sign = commands.add_parser("sign", parents=[common], help="sign a file or model directory (offline)",
                               description="Sign a file or a model directory into a Sigstore bundle, offline.")
    sign.add_argument("path", metavar="PATH", help="a file or a model directory")
    sign.add_argument("--name", help="the artifact name the signature describes, which the server requires to be "
                                     "the name it is uploaded under (default: PATH's final component)")
    _signing_key_options(sign, required=True)
    sign.add_argument("-o", "--output", required=True, metavar="BUNDLE", help="where to write the bundle")
    sign.set_defaults(handler="sign")


def _add_verify(commands, common) -> None:
    verify = commands.add_parser(
        "verify", parents=[common], help="verify a file or model directory against a bundle (offline)",
        description="Verify a file or model directory against a Sigstore bundle, offline. "
                    "Exit 0 only if it verifies; 1 if not, with the reason.")
    verify.add_argument("path", metavar="PATH")
    verify.add_argument("bundle", metavar="BUNDLE")
    verify.add_argument("--name", help="the artifact name the signature must describe (default: PATH's final "
                                       "component)")
    verify.add_argument("--public-key", action="append", default=[], metavar="ID=PEMFILE",
                        help="trust this public key, named ID (repeatable)")
    verify.add_argument("--ca-root", action="append", default=[], metavar="PEMFILE",
                        help="trust certificates chaining to this CA root (repeatable; needs --identity)")
    verify.add_argument("--identity", action="append", default=[], metavar="SAN",
                        help="an email or URI allowed to sign with a certificate (repeatable)")
    verify.add_argument("--sigstore-identity", action="append", default=[], metavar="ID",
                        help="a Sigstore identity allowed to sign keylessly (repeatable, with --sigstore-issuer)")
    verify.add_argument("--sigstore-issuer", action="append", default=[], metavar="ISSUER",
                        help="the OIDC issuer of the matching --sigstore-identity")
    verify.add_argument("--trusted-root", metavar="JSON",
                        help="a Sigstore trusted root (default: the public-good root shipped with sigstore)")
    verify.set_defaults(handler="verify")


def _add_workflow(commands, common) -> None:
    workflow = commands.add_parser("workflow", help="register and list workflow versions")
    actions = workflow.add_subparsers(dest="action", metavar="ACTION", required=True)
    push = actions.add_parser("push", parents=[common], help="register a version from a spec file",
                              description="Register a workflow version from a YAML or JSON spec. The spec is "
                                          "checked locally first; the server decides.")
    push.add_argument("spec", metavar="SPEC")
    push.add_argument("--artifact", action="append", default=[], metavar="sha256:...",
                      help="the digest of an artifact the version uses (repeatable)")
    _tenant_option(push)
    push.set_defaults(handler="workflow_push")
    versions = actions.add_parser("versions", parents=[common], help="list a workflow's versions")
    versions.add_argument("name", metavar="NAME")
    _tenant_option(versions)
    versions.set_defaults(handler="workflow_versions")


def _add_artifact(commands, common) -> None:
    artifact = commands.add_parser("artifact", help="upload artifacts")
    actions = artifact.add_subparsers(dest="action", metavar="ACTION", required=True)
    push = actions.add_parser("push", parents=[common], help="upload a file or model directory",
                              description="Upload a file, or a model directory as a deterministic tar; "
                                          "with --sign, sign it first and have the server verify the signature.")
    push.add_argument("path", metavar="PATH")
    push.add_argument("--name", required=True, help="the artifact's name (with --sign, the name the signature "
                                                    "describes too)")
    push.add_argument("--kind", required=True, choices=["model", "dataset", "metrics", "container", "spec", "other"])
    push.add_argument("--region", help="where it is stored (default: the tenant's jurisdiction)")
    push.add_argument("--progress", action="store_true",
                      help="show progress bars on stderr even when it is not a terminal")
    push.add_argument("--sign", action="store_true", help="sign PATH before uploading and submit the signature")
    _signing_key_options(push, required=False)
    _tenant_option(push)
    push.set_defaults(handler="artifact_push")


def _handler(name: str):
    from . import server_commands, signing_commands

    return {"sign": signing_commands.sign, "verify": signing_commands.verify,
            "workflow_push": server_commands.workflow_push, "workflow_versions": server_commands.workflow_versions,
            "artifact_push": server_commands.artifact_push}[name]


def _configure_logging(debug: bool) -> None:
    if debug:
        logging.basicConfig(level=logging.DEBUG)
    else:
        # Libraries' warnings (and logged tracebacks) would reach stderr through logging's
        # last-resort handler; a handler on the root logger keeps them quiet.
        logging.getLogger().addHandler(logging.NullHandler())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Output(json_mode="--json" in argv)  # known before parsing, so usage errors are JSON too
    debug = bool(os.environ.get("NEOCLOUD_DEBUG"))
    _configure_logging(debug)
    try:
        args = build_parser().parse_args(argv)
        args.url = getattr(args, "url", None)
        out = Output(json_mode=getattr(args, "json", False))
        return _handler(args.handler)(args, out)
    except CliError as error:
        out.error(error)
        return error.exit_code
    except KeyboardInterrupt:
        out.error(CliError(130, "interrupted", "Interrupted."))
        return 130
    except Exception as exc:  # noqa: BLE001 - the promise is one sentence and never a traceback
        if debug:
            traceback.print_exc()
        out.error(CliError(LOCAL_ERROR, "unexpected_error", sentence(
            f"Unexpected error ({type(exc).__name__}: {exc}); run again with NEOCLOUD_DEBUG=1 for details")))
        return LOCAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
