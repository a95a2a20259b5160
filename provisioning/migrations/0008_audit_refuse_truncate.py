from django.db import migrations

# 0002's row-level trigger never sees TRUNCATE, which empties the table without
# touching a row. A statement-level trigger refuses it with the same function
# ("audit events are append-only (TRUNCATE refused)"); a TRUNCATE of a table
# the events point at, with CASCADE, reaches this table and is refused too.
#
# The triggers stop the owner's mistakes (`manage.py flush`, a careless
# shell); the owner can still drop them, so what stops a compromised console
# is that it runs as the role `manage.py create_app_role` makes, which owns
# nothing, may only SELECT and INSERT events, and cannot ALTER the table or set
# session_replication_role (docs/DATABASE.md). The test suite empties tables
# between transactional tests with TRUNCATE: tests/conftest.py does that as the
# owner with the triggers disabled inside the same transaction.
FORWARD = """
CREATE TRIGGER provisioning_auditevent_refuse_truncate
    BEFORE TRUNCATE ON provisioning_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION provisioning_auditevent_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS provisioning_auditevent_refuse_truncate ON provisioning_auditevent;
"""


class Migration(migrations.Migration):
    dependencies = [("provisioning", "0007_provisioningrun_resumes")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
