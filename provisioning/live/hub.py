"""Kept only because provisioning.engine's Waiter imports ``conninfo`` from here.

The live hub itself is ``console.live.hub``; delete this package once the
engine imports ``provisioning.pgconn.conninfo`` directly.
"""

from provisioning.pgconn import conninfo

__all__ = ["conninfo"]
