from provisioning.models import TenantIdentity
from provisioning.signin import hash_token, make_token, new_nonce
from provisioning.steps.base import Step


class AllocateIdentity(Step):
    id = "allocate_identity"
    label = "Allocate identity store"
    seconds = 30

    def run(self, ctx) -> dict:
        tenant = ctx.tenant
        identity = TenantIdentity.objects.filter(tenant=tenant).first()
        if identity:
            ctx.log(f"organization {identity.organization} already exists; reusing it")
        else:
            nonce = new_nonce()
            identity, created = TenantIdentity.objects.get_or_create(
                tenant=tenant,
                defaults={
                    "organization": tenant.org,
                    "admin_email": tenant.admin_email,
                    "token_nonce": nonce,
                    "token_hash": hash_token(make_token(tenant.pk, nonce)),
                },
            )
            ctx.log(
                f"created organization {identity.organization} with first admin "
                f"{identity.admin_email} and a one-time sign-in token"
            )
        return {"identity_id": identity.pk, "admin_email": identity.admin_email}

    def compensate(self, ctx) -> None:
        deleted, _ = TenantIdentity.objects.filter(tenant=ctx.tenant).delete()
        ctx.log("removed organization and first admin" if deleted else "identity already gone")

    def verify(self, ctx, outputs) -> bool:
        return TenantIdentity.objects.filter(tenant=ctx.tenant).exists()
