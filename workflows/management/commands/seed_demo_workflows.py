"""Add a demo workflow to the demo tenants (after `seed_demo`): a GPU flavor and quota, a
trusted signing key, policy data, a signed model and metrics, version 1 promoted to
development and waiting in staging for an approver. Idempotent; refused in production."""

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.log import denials_recorded
from policies.governance import governed_change_confirm
from policies.models import GovernedChangeProposal
from policies.services import tenant_policy_of, tenant_policy_update
from policies.quotas import tenant_quota_set
from tenants.management.commands.totp_code import unspent_code
from tenants.models import GpuFlavor, Tenant
from tenants.services import gpu_flavor_create
from workflows import signing
from workflows.models import Workflow
from workflows.promotions import promotion_request
from workflows.services import artifact_upload, workflow_version_register
from workflows.trust import signature_attach, trust_config_update

SPEC = {
    "name": "fraud-detector",
    "description": "Fine-tune the fraud model on last quarter's transactions",
    "base_model": {"name": "mistralai/Mistral-7B"},
    # The input's digest is that of TRANSACTIONS, uploaded as the tenant's artifact: a run copies
    # only bytes its tenant holds.
    "inputs": [{"name": "transactions", "region": "eu", "uri": "s3://acme-data/tx.csv"}],
    "steps": [
        {"name": "prepare", "command": ["sh", "-c", "wc -l < inputs/transactions > rows.txt; echo prepared"],
         "timeout_seconds": 600},
        {"name": "train", "command": ["sh", "-c", "echo training on $(cat rows.txt) rows"],
         "gpu": {"flavor": "h100-80gb", "count": 2}, "depends_on": ["prepare"]},
    ],
}
TRANSACTIONS = b"amount,label\n" + b"".join(f"{(n * 37) % 1000}.{n % 100:02d},{int(n % 17 == 0)}\n".encode()
                                             for n in range(1, 501))


class Command(BaseCommand):
    help = "Add the demo workflow, signed artifacts and promotions to acme-bank (after seed_demo)."

    def handle(self, *args, **options):
        if settings.PRODUCTION:
            raise CommandError("The demo seed is for development only; it is refused in production.")
        User = get_user_model()
        people = {name: User.objects.filter(username=name).first()
                  for name in ("ops-ada", "ops-grace", "bank-dev", "bank-admin1", "bank-admin2")}
        tenant = Tenant.objects.filter(slug="acme-bank").first()
        if tenant is None or None in people.values():
            raise CommandError("Run `manage.py seed_demo` first: the demo tenants and people are missing.")
        if Workflow.objects.filter(tenant=tenant, name=SPEC["name"]).exists():
            self.stdout.write("The demo workflow is already there.")
            return
        with denials_recorded():
            self._seed(tenant, (people["ops-ada"], people["ops-grace"]), people["bank-dev"],
                       (people["bank-admin1"], people["bank-admin2"]))
        self.stdout.write("Demo workflow fraud-detector: v1 is in development and waits in staging for an "
                          "approver (sign in as bank-approver1).")

    def _seed(self, tenant, operators, developer, admins):
        flavor = GpuFlavor.objects.filter(name="h100-80gb").first() or gpu_flavor_create(
            actor=operators[0], name="h100-80gb", memory_gb=80, billing_weight="1.0", description="NVIDIA H100 80GB")
        # A quota raise loosens too: one platform admin proposes it, the other confirms it.
        self._governed(tenant_quota_set, tenant, *operators, flavor=flavor, nominal=4, borrowing_limit=4)
        private_pem, public_pem = signing.generate_key_pair()
        # Both changes loosen, so each admin proposes one and the other confirms it (one code each).
        self._governed(trust_config_update, tenant, *admins, public_keys={"demo-ci": public_pem.decode()})
        if tenant_policy_of(tenant).revision == 0:
            self._governed(tenant_policy_update, tenant, *reversed(admins), base_model_allowlist=["mistralai/*"],
                           metrics_thresholds={"accuracy": 0.9, "auc": 0.85}, comment="demo thresholds")
        digests = [self._signed(tenant, developer, private_pem, "fraud-model", "model", os.urandom(64 * 1024)),
                   self._signed(tenant, developer, private_pem, "fraud-eval", "metrics",
                                json.dumps({"accuracy": 0.94, "auc": 0.91}).encode())]
        transactions = self._upload(tenant, developer, "transactions", "dataset", TRANSACTIONS).digest
        spec = {**SPEC, "inputs": [{**SPEC["inputs"][0], "digest": transactions}]}
        version, _ = workflow_version_register(actor=developer, tenant=tenant, spec=spec, artifact_digests=digests)
        promotion_request(actor=developer, tenant=tenant, version=version, stage="development",
                          justification="First fine-tune of the quarter")
        promotion_request(actor=developer, tenant=tenant, version=version, stage="staging",
                          justification="Evaluation passed on the holdout set")

    @staticmethod
    def _governed(update, tenant, proposer, confirmer, **changes):
        result = update(actor=proposer, tenant=tenant, **changes)
        if isinstance(result, GovernedChangeProposal):
            device = TOTPDevice.objects.get(user=confirmer, confirmed=True)
            governed_change_confirm(actor=confirmer, proposal=result, otp_token=unspent_code(device),
                                    diff_digest=result.diff_digest)

    @staticmethod
    def _upload(tenant, developer, name, kind, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        artifact, _ = artifact_upload(actor=developer, tenant=tenant, name=name, kind=kind, region="eu",
                                      digest=digest, declared_size=len(data), stream=io.BytesIO(data))
        return artifact

    @classmethod
    def _signed(cls, tenant, developer, private_pem, name, kind, data) -> str:
        artifact = cls._upload(tenant, developer, name, kind, data)
        digest = artifact.digest
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / name
            path.write_bytes(data)
            bundle = signing.sign_path(path, private_key_pem=private_pem, name=name)
        verification = signature_attach(actor=developer, tenant=tenant, artifact=artifact, bundle=bundle.encode())
        if not verification.verified:
            raise CommandError(f"The demo signature on {name} did not verify: {verification.reason}")
        return digest
