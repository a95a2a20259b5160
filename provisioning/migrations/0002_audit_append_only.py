from django.db import migrations

# The audit log is append-only in the database itself, so no code path (the
# admin, a shell, a bug) can rewrite history. TRUNCATE, which test set-up
# uses, is a different statement and is not affected.
FORWARD = """
CREATE OR REPLACE FUNCTION provisioning_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER provisioning_auditevent_append_only
    BEFORE UPDATE OR DELETE ON provisioning_auditevent
    FOR EACH ROW EXECUTE FUNCTION provisioning_auditevent_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS provisioning_auditevent_append_only ON provisioning_auditevent;
DROP FUNCTION IF EXISTS provisioning_auditevent_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("provisioning", "0001_initial")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
